package fw

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -I../include" -target bpfel -type qbo_event_hdr -type fw_tuple4 -type fw_tuple6 -type fw_ifslot_key -type fw_scope_val -type fw_key4 -type fw_key6 -type fw_rule -type fw_counter -type fw_config -type fw_ct_key -type fw_ct_ent -type fw_ct_set -type fw_tss4_bucket -type fw_tss6_bucket -type fw_frag_key -type fw_frag_val -type fw_deny_event -type qbo_pf_key4 -type qbo_pf_key6 -type qbo_pf_val -type qbo_pf_hosts -type qbo_pf_config fw fw.c
