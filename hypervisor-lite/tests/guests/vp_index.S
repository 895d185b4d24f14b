/* Every vCPU reports what it started with: VP index (RDI) to 0x500, initial APIC id from CPL0 CPUID leaf 1
 * to 0x504, its stack pointer to 0x508, the vCPU count (RSI) to 0x50C; then exits with 0x100 + VP index. */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        mov     %edi, %eax
        mov     $0x500, %dx
        out     %eax, %dx
        mov     $1, %eax
        cpuid
        shr     $24, %ebx
        mov     %ebx, %eax
        mov     $0x504, %dx
        out     %eax, %dx
        mov     %esp, %eax
        mov     $0x508, %dx
        out     %eax, %dx
        mov     %esi, %eax
        mov     $0x50c, %dx
        out     %eax, %dx
        lea     0x100(%rdi), %eax
        out     %eax, $EXIT_PORT
