/* 64-bit long mode: prints a line on COM1 and exits with 0x64. */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        PUTS    msg, msg_len
        EXIT    0x64

        .section .rodata
msg:    .ascii  "hello from 64-bit long mode\n"
        .set    msg_len, . - msg
