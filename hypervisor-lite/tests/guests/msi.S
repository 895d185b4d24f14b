/* Interrupt handlers for vectors 0x40 and 0x41 count into count40/count41 and EOI the xAPIC. The guest
 * enables its LAPIC, reports &count40 to port 0x710 (count41 follows at +4), reads the expected count K per
 * vector from 0x714, then halts with interrupts on until both counters reach K; reports both to 0x718; exit 0. */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        lea     isr40(%rip), %rax
        lea     idt + 0x40 * 16(%rip), %rbx
        SET_GATE %rbx
        lea     isr41(%rip), %rax
        lea     idt + 0x41 * 16(%rip), %rbx
        SET_GATE %rbx
        lidt    idtr(%rip)
        mov     $LAPIC_SVR, %ebx
        movl    $0x1ff, (%rbx)          /* software-enable, spurious vector 0xFF */
        lea     count40(%rip), %rax
        mov     $0x710, %dx
        out     %eax, %dx               /* ready */
        mov     $0x714, %dx
        in      %dx, %eax
        mov     %eax, %r12d
wait:   cli
        cmp     %r12d, count40(%rip)
        jb      sleep
        cmp     %r12d, count41(%rip)
        jb      sleep
        mov     $0x718, %dx
        mov     count40(%rip), %eax
        out     %eax, %dx
        mov     count41(%rip), %eax
        out     %eax, %dx
        EXIT    0
sleep:  sti
        hlt
        jmp     wait

isr40:  incl    count40(%rip)
        jmp     eoi
isr41:  incl    count41(%rip)
eoi:    push    %rax
        mov     $LAPIC_EOI, %eax
        movl    $0, (%rax)
        pop     %rax
        iretq

        .data
        .balign 8
idtr:   .word   0x42 * 16 - 1
        .quad   idt

        .bss
        .balign 16
idt:    .skip   0x42 * 16
count40: .long  0
count41: .long  0
