/* VP 0 exits with 0x42 at once; every other VP halts with interrupts off forever: only a stop ends them. */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        test    %edi, %edi
        jnz     1f
        EXIT    0x42
1:      cli
        hlt
        jmp     1b
