/* 32-bit protected mode (paging off, flat segments): prints a line on COM1 and exits with 0x32. */
#include "common.inc"
        .code32
        .text
        .globl  _start
_start:
        mov     $msg, %esi
        mov     $msg_len, %ecx
        mov     $COM1, %dx
1:      lodsb
        out     %al, %dx
        loop    1b
        mov     %cr0, %eax              /* report CR0 so the host can check PE=1, PG=0 */
        mov     $0x520, %dx
        out     %eax, %dx
        EXIT    0x32

        .section .rodata
msg:    .ascii  "hello from 32-bit protected mode\n"
        .set    msg_len, . - msg
