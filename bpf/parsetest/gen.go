package parsetest

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -I../include" -target bpfel -type qbo_pkt -type parse_result parsetest parsetest.c
