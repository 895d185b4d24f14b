/* Loads marker values and executes ud2 with no IDT: #UD cannot be delivered -> triple fault (shutdown).
 * The ud2 is at _start + 10. */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        mov     $0x1234abcd, %eax
        mov     $0xfee1dead, %ecx
        ud2
