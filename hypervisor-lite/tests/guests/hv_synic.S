// hv_synic: the Hyper-V surface end to end at CPL0 (every instruction here is emulated: keep it short).
// Enables the hypercall page and the SynIC, calls HvPostMessage on connection 1 (the host's handler answers by
// posting two messages to SINT2 and signalling event flag 5 on SINT3), takes both interrupts, frees the message
// slot and writes EOM to receive the second message, then signals connection 7 fast and slow.
// Fixed guest physical layout (mirrored in tests/hv_synic.rs):
//   0x300000 results (u64 each, see R_* below); 0x300800 message IRQ count; 0x300808 event IRQ count
//   0x310000 hypercall page, 0x311000 SIMP, 0x312000 SIEFP, 0x313000 hypercall input, 0x314000 IDT
// Exits through port 0xF4 with 0.

.intel_syntax noprefix
.set RESULTS, 0x300000
.set MSG_COUNT, 0x300800
.set EVT_COUNT, 0x300808
.set HCPAGE, 0x310000
.set SIMP, 0x311000
.set SIEFP, 0x312000
.set INPUT, 0x313000
.set IDT, 0x314000
.set SLOT2, SIMP + 2 * 256
.set MSG_VECTOR, 0xF3
.set EVT_VECTOR, 0xF4

.macro MSR_WRITE msr, lo, hi=0
    mov ecx, \msr
    mov eax, \lo
    mov edx, \hi
    wrmsr
.endm

.macro RDMSR_TO msr, slot
    mov ecx, \msr
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov [RESULTS + 8 * \slot], rax
.endm

.macro HCALL
    mov r10d, HCPAGE
    call r10
.endm

.section .text.entry, "ax"
.global _start
.code64
_start:
    cli
    lea rax, [rip + msg_isr]
    mov edi, MSG_VECTOR
    call set_gate
    lea rax, [rip + evt_isr]
    mov edi, EVT_VECTOR
    call set_gate
    sub rsp, 16
    mov word ptr [rsp], 0xFFF
    mov qword ptr [rsp + 2], IDT
    lidt [rsp]
    add rsp, 16
    mov eax, 0xFEE000F0                  // LAPIC spurious vector register: software enable
    mov dword ptr [rax], 0x1FF

    MSR_WRITE 0x40000000, 0, 0x81000000      // GUEST_OS_ID
    MSR_WRITE 0x40000001, HCPAGE | 1         // HYPERCALL: enable at HCPAGE
    RDMSR_TO 0x40000001, 0
    MSR_WRITE 0x40000083, SIMP | 1
    MSR_WRITE 0x40000082, SIEFP | 1
    MSR_WRITE 0x40000092, MSG_VECTOR         // SINT2
    MSR_WRITE 0x40000093, EVT_VECTOR         // SINT3
    MSR_WRITE 0x40000080, 1                  // SCONTROL
    RDMSR_TO 0x40000002, 13              // VP_INDEX
    RDMSR_TO 0x40000081, 14              // SVERSION

    // HvPostMessage(conn 1, type 1, "ping")
    mov dword ptr [INPUT], 1
    mov dword ptr [INPUT + 8], 1
    mov dword ptr [INPUT + 12], 4
    mov dword ptr [INPUT + 16], 0x676E6970
    mov ecx, 0x5C
    mov edx, INPUT
    xor r8d, r8d
    HCALL
    mov [RESULTS + 8 * 1], rax

    sti
    mov ebx, 1
    call wait_msg
    mov rax, [MSG_COUNT]
    mov [RESULTS + 8 * 2], rax
    mov rax, [SLOT2]
    mov [RESULTS + 8 * 3], rax
    mov rax, [SLOT2 + 16]
    mov [RESULTS + 8 * 4], rax
    mov ecx, 100000                      // the event interrupt (higher vector) came first; bounded wait anyway
1:  cmp qword ptr [EVT_COUNT], 1
    jae 2f
    dec ecx
    jnz 1b
2:  mov rax, [EVT_COUNT]
    mov [RESULTS + 8 * 5], rax
    mov rax, [SIEFP + 3 * 256]
    mov [RESULTS + 8 * 6], rax

    mov rax, [MSG_COUNT]                 // still 1: the second message waits for the slot
    mov [RESULTS + 8 * 7], rax
    mov dword ptr [SLOT2], 0             // free the slot, then EOM because the pending flag was set
    mfence
    MSR_WRITE 0x40000084, 0
    mov ebx, 2
    call wait_msg
    mov rax, [MSG_COUNT]
    mov [RESULTS + 8 * 8], rax
    mov rax, [SLOT2]
    mov [RESULTS + 8 * 9], rax
    mov rax, [SLOT2 + 16]
    mov [RESULTS + 8 * 10], rax

    mov ecx, 0x1005D                     // fast HvSignalEvent(conn 7): doorbell ioeventfd
    mov edx, 7
    HCALL
    mov [RESULTS + 8 * 11], rax
    mov qword ptr [INPUT + 512], 7       // slow HvSignalEvent(conn 7)
    mov ecx, 0x5D
    mov edx, INPUT + 512
    xor r8d, r8d
    HCALL
    mov [RESULTS + 8 * 12], rax

    xor eax, eax
    out 0xF4, eax
    hlt

// rbx = wanted message count; bounded spin
wait_msg:
    mov ecx, 200000
1:  cmp [MSG_COUNT], rbx
    jae 2f
    pause
    dec ecx
    jnz 1b
2:  ret

// rdi = vector, rax = handler: 64-bit interrupt gate, CS 0x08
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

msg_isr:
    lock inc qword ptr [MSG_COUNT]
    jmp eoi
evt_isr:
    lock inc qword ptr [EVT_COUNT]
eoi:
    push rax
    mov eax, 0xFEE000B0
    mov dword ptr [rax], 0
    pop rax
    iretq
