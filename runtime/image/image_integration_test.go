//go:build integration

package image

import (
	"context"
	"strings"
	"testing"

	"github.com/qbo/qbo/runtime/engine"
)

// TestBuildIsCached builds the instance image from this host's binaries
// (or finds it: the image store is the cache, keyed by content) and checks
// a second build reuses it.
func TestBuildIsCached(t *testing.T) {
	ctx := context.Background()
	c, err := engine.Docker(ctx, engine.DefaultDockerHost)
	if err != nil {
		t.Fatalf("the integration tier needs the host dockerd (scripts/engines.sh start): %v", err)
	}
	defer c.Close()
	first, err := Build(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Build(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if !second.Cached || second.Ref != first.Ref || !strings.HasPrefix(first.Ref, Repository+":") {
		t.Fatalf("first %+v, second %+v", first, second)
	}
	ref, err := Ref()
	if err != nil || ref != first.Ref {
		t.Errorf("Ref() = %q, %v; want %q", ref, err, first.Ref)
	}
	img, err := c.ImageInspect(ctx, first.Ref)
	if err != nil {
		t.Fatal(err)
	}
	l := img.Config.Labels
	if l[engine.LabelManaged] != "true" || l[engine.LabelRole] != engine.RoleImage || l[engine.LabelContent] != first.Key {
		t.Errorf("image labels %v", l)
	}
}
