package main

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/qbo/qbo/mirror"
	"github.com/qbo/qbo/runtime/instance"
)

// jsonFields lists the JSON names of t's fields, embedded structs' fields
// included, as encoding/json emits them.
func jsonFields(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-":
		case f.Anonymous && name == "":
			out = append(out, jsonFields(f.Type)...)
		case !f.IsExported():
		case name == "":
			out = append(out, f.Name)
		default:
			out = append(out, name)
		}
	}
	return out
}

// TestMirrorObjectsMatchTheirSchemas: every field a mirror object's Go type
// emits is a property of its schema in the AsyncAPI document, and every
// property of the schema is a field the type can emit, so that neither
// documents what the other lacks.
func TestMirrorObjectsMatchTheirSchemas(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]any `yaml:"properties"`
			} `yaml:"schemas"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(mirror.AsyncAPI, &doc); err != nil {
		t.Fatal(err)
	}
	for schema, v := range map[string]any{
		"process":             process{},
		"connection":          connection{},
		"event":               dropEvent{},
		"instance":            instance.Instance{},
		"innerContainer":      instance.InnerContainer{},
		"hostContainer":       instance.HostContainer{},
		"containerdContainer": containerdObj{},
		"firewallRule":        ruleView{},
		"firewallPolicy":      policyView{},
		"firewallDeny":        denyView{},
		"service":             serviceView{},
		"backend":             backendView{},
	} {
		s, ok := doc.Components.Schemas[schema]
		if !ok {
			t.Errorf("asyncapi.yaml has no schema %s", schema)
			continue
		}
		fields := jsonFields(reflect.TypeOf(v))
		for _, f := range fields {
			if _, ok := s.Properties[f]; !ok {
				t.Errorf("%T emits %q, which schema %s does not list", v, f, schema)
			}
		}
		for p := range s.Properties {
			if !slices.Contains(fields, p) {
				t.Errorf("schema %s lists %q, which %T does not emit", schema, p, v)
			}
		}
	}
}
