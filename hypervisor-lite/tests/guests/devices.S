/* Port I/O and MMIO of several widths; values read from handlers are echoed to port 0x603. */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        mov     $0x12345678, %eax
        mov     $0x600, %dx
        out     %eax, %dx               /* 32-bit write */
        mov     $0xab, %al
        mov     $0x601, %dx
        out     %al, %dx                /* 8-bit write */
        mov     $0x602, %dx
        in      %dx, %eax               /* 32-bit read */
        mov     $0x603, %dx
        out     %eax, %dx               /* echo */
        in      %dx, %ax                /* 16-bit read of 0x603 */
        movzwl  %ax, %eax
        out     %eax, %dx               /* echo */

        mov     $0xd0000000, %ebx       /* in the MMIO hole, identity-mapped */
        movabs  $0x1122334455667788, %rax
        mov     %rax, (%rbx)            /* 64-bit MMIO write */
        movl    0x10(%rbx), %eax        /* 32-bit MMIO read */
        out     %eax, %dx               /* echo */
        movb    $0x5a, 0x20(%rbx)       /* 8-bit MMIO write */
        EXIT    0
