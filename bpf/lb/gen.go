package lb

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -I../include" -target bpfel -type lb_svc_key -type lb_svc_val -type lb_backend -type lb_flow_key -type lb_flow -type lb_set_head -type lb_flow_ent -type lb_flow_set -type lb_rnat_val -type lb_rnat_ent -type lb_rnat_set -type lb_upgrade_stats -type lb_frag_key -type lb_stat_val lb lb.c
