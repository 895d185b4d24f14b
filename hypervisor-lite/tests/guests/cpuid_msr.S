/* CPL0 CPUID leaf 0x40000000 (EAX, EBX, ECX, EDX to port 0x730); wrmsr/rdmsr of MSR 0x40000000 (read-back
 * EAX, EDX to 0x734); rdmsr of 0x40000005, which the host refuses: the #GP handler counts and skips it; the
 * count goes to 0x738; exit 0. */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        lea     gp_handler(%rip), %rax
        lea     idt + 13 * 16(%rip), %rbx
        SET_GATE %rbx
        lidt    idtr(%rip)

        mov     $0x40000000, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %edx, %r8d
        mov     $0x730, %dx
        out     %eax, %dx
        mov     %ebx, %eax
        out     %eax, %dx
        mov     %ecx, %eax
        out     %eax, %dx
        mov     %r8d, %eax
        out     %eax, %dx

        mov     $0x40000000, %ecx
        mov     $0x55667788, %eax
        mov     $0x11223344, %edx
        wrmsr
        xor     %eax, %eax
        xor     %edx, %edx
        rdmsr
        mov     %edx, %r8d
        mov     $0x734, %dx
        out     %eax, %dx
        mov     %r8d, %eax
        out     %eax, %dx

        mov     $0x40000005, %ecx
        rdmsr                           /* #GP, skipped by the handler */
        mov     gp_count(%rip), %eax
        mov     $0x738, %dx
        out     %eax, %dx
        EXIT    0

gp_handler:
        add     $8, %rsp                /* error code */
        addq    $2, (%rsp)              /* skip the 2-byte rdmsr */
        incl    gp_count(%rip)
        iretq

        .data
        .balign 8
idtr:   .word   14 * 16 - 1
        .quad   idt

        .bss
        .balign 16
idt:    .skip   14 * 16
gp_count: .long 0
