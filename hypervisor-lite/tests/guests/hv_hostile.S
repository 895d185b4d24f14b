// hv_hostile: a guest that feeds the enlightenments bad input; each result must be what Hyper-V gives and the
// host must keep running. A #GP handler counts faults and skips the 2-byte rdmsr/wrmsr. Results are u64 at
// 0x300000 + 8 * i (see tests/hv_hostile.rs); #GP count at 0x300810, SINT2 interrupt count at 0x300800.
// Layout: hypercall page 0x310000, SIMP 0x311000, input page 0x313000, IDT 0x314000. RAM must end below
// 0x80000000 (used as "outside RAM"). Exits through port 0xF4 with 0.

.intel_syntax noprefix
.set RESULTS, 0x300000
.set MSG_COUNT, 0x300800
.set GP_COUNT, 0x300810
.set HCPAGE, 0x310000
.set SIMP, 0x311000
.set INPUT, 0x313000
.set IDT, 0x314000
.set OUTSIDE, 0x80000000

.macro MSR_WRITE msr, lo, hi=0
    mov ecx, \msr
    mov eax, \lo
    mov edx, \hi
    wrmsr
.endm

.macro SAVE reg, slot
    mov [RESULTS + 8 * \slot], \reg
.endm

// rcx = control, rdx = input; status -> result slot
.macro CALL_HV control, input, slot
    mov ecx, \control
    mov edx, \input
    xor r8d, r8d
    mov r10d, HCPAGE
    call r10
    SAVE rax, \slot
.endm

// HvPostMessage input at INPUT + off: conn, type 1, size
.macro POST_INPUT off, conn, size
    mov dword ptr [INPUT + \off], \conn
    mov dword ptr [INPUT + \off + 8], 1
    mov dword ptr [INPUT + \off + 12], \size
.endm

.section .text.entry, "ax"
.global _start
.code64
_start:
    cli
    lea rax, [rip + gp_isr]
    mov edi, 13
    call set_gate
    lea rax, [rip + msg_isr]
    mov edi, 0xF3
    call set_gate
    sub rsp, 16
    mov word ptr [rsp], 0xFFF
    mov qword ptr [rsp + 2], IDT
    lidt [rsp]
    add rsp, 16
    mov eax, 0xFEE000F0
    mov dword ptr [rax], 0x1FF

    MSR_WRITE 0x40000092, 5              // SINT2 unmasked with vector 5: #GP
    mov rax, [GP_COUNT]
    SAVE rax, 0
    mov ecx, 0x40000092
    rdmsr
    SAVE rax, 1                          // unchanged: 0x10000
    mov ecx, 0x40000199                  // no such synthetic MSR: #GP
    rdmsr
    mov rax, [GP_COUNT]
    SAVE rax, 2
    MSR_WRITE 0x40000002, 5              // VP_INDEX is read-only: #GP
    mov rax, [GP_COUNT]
    SAVE rax, 3
    MSR_WRITE 0x40000000, 0, 0x81000000
    MSR_WRITE 0x40000001, OUTSIDE | 1    // hypercall page outside RAM: #GP
    mov rax, [GP_COUNT]
    SAVE rax, 4
    mov ecx, 0x40000001
    rdmsr
    SAVE rax, 5                          // still disabled
    MSR_WRITE 0x40000001, HCPAGE | 1

    POST_INPUT 0, 1, 4
    CALL_HV 0x5C, OUTSIDE, 6             // input outside RAM: 5
    CALL_HV 0x5C, INPUT + 4, 7           // misaligned: 4
    POST_INPUT 0xF08, 1, 4
    CALL_HV 0x5C, INPUT + 0xF08, 8       // crosses a page: 4
    POST_INPUT 0x100, 1, 241
    CALL_HV 0x5C, INPUT + 0x100, 9       // payload 241 bytes: 5
    POST_INPUT 0x200, 99, 4
    CALL_HV 0x5C, INPUT + 0x200, 10      // unknown connection: 0x12
    CALL_HV 0x99, INPUT, 11              // unknown call code: 2
    CALL_HV 0x1005D, 8, 12               // fast signal, connection without ioeventfd: doorbell exit, 0x12
    mov ecx, 0x1005D                     // fast signal with flag number 1: slow path, 0x11
    mov rdx, 0x100000007
    mov r10d, HCPAGE
    call r10
    SAVE rax, 13
    CALL_HV 0x5D, OUTSIDE, 14            // slow signal input outside RAM: 5

    MSR_WRITE 0x40000092, 0xF3
    MSR_WRITE 0x40000080, 1
    MSR_WRITE 0x40000083, OUTSIDE | 1    // SIMP outside RAM: accepted (overlay GPA), nothing deliverable
    mov rax, [GP_COUNT]
    SAVE rax, 15
    CALL_HV 0x5C, INPUT, 16              // host answers by posting to SINT2: stays queued
    sti
    MSR_WRITE 0x40000083, SIMP | 1       // SIMP into RAM: the queued message arrives
    mov ecx, 200000
1:  cmp qword ptr [MSG_COUNT], 1
    jae 2f
    pause
    dec ecx
    jnz 1b
2:  mov rax, [MSG_COUNT]
    SAVE rax, 17
    mov rax, [SIMP + 2 * 256]
    SAVE rax, 18
    xor eax, eax
    out 0xF4, eax
    hlt

set_gate:
    shl edi, 4
    add edi, IDT
    mov [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8E00
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    ret

gp_isr:
    lock inc qword ptr [GP_COUNT]
    add qword ptr [rsp + 8], 2           // skip the faulting rdmsr/wrmsr (saved RIP is above the error code)
    add rsp, 8
    iretq

msg_isr:
    lock inc qword ptr [MSG_COUNT]
    push rax
    mov eax, 0xFEE000B0
    mov dword ptr [rax], 0
    pop rax
    iretq
