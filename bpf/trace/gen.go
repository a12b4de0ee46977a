package trace

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -I../include" -target bpfel -type qbo_event_hdr -type qbo_event_kind -type qbo_event_version -type qbo_kind_stat -type task_ctx -type exec_event -type fork_event -type exit_event -type tcp_event -type drop_event trace trace.c
