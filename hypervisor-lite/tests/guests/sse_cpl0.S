/* SSE arithmetic at CPL0, which KVM-PVM's instruction emulator cannot run: expected to end the vCPU with
 * KVM_EXIT_INTERNAL_ERROR (on hardware-assisted KVM it runs and the guest exits with 0x55). */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        mov     $0x5e5e, %ebx
        xorps   %xmm0, %xmm0
        addps   %xmm0, %xmm0
        EXIT    0x55
