/* Touches guest RAM at 4 GiB and in the last 8 bytes of RAM (RDX = RAM bytes > 3 GiB, so RAM ends at
 * RDX + 1 GiB), checks the values read back, reports the last address to 0x720 (low, high), exits 0 (1 on
 * mismatch). */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        lea     0x40000000 - 8(%rdx), %rbx
        movabs  $0x0123456789abcdef, %rax
        mov     %rax, (%rbx)
        mov     $1, %ecx
        shl     $32, %rcx
        mov     %rbx, (%rcx)
        cmp     (%rbx), %rax
        jne     bad
        cmp     (%rcx), %rbx
        jne     bad
        mov     $0x720, %dx
        mov     %ebx, %eax
        out     %eax, %dx
        shr     $32, %rbx
        mov     %ebx, %eax
        out     %eax, %dx
        EXIT    0
bad:    EXIT    1
