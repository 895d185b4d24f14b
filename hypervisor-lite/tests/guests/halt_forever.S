/* Prints one byte, then halts with interrupts off forever: only a stop request ends it. */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        mov     $'H', %al
        mov     $COM1, %dx
        out     %al, %dx
1:      cli
        hlt
        jmp     1b
