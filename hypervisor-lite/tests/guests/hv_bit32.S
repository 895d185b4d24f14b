// hv_bit32: the Hyper-V surface from a 32-bit protected-mode guest (paging off, flat segments, CPL0; every
// instruction runs in KVM's emulator here: keep it short). Detects the enlightenments with CPUID, enables the
// hypercall page and the SynIC, and calls the page with the 32-bit convention (EDX:EAX control, EBX:ECX input,
// EDI:ESI output, result in EDX:EAX): HvPostMessage on connection 1 (the host's handler answers with a message to
// SINT2 and event flag 5 on SINT3), takes both interrupts in its IDT handlers, signals connection 7 fast (doorbell
// ioeventfd) and slow, connection 8 fast (no ioeventfd: a doorbell exit), and makes five hostile calls.
// Fixed guest physical layout (mirrored in tests/hv_bit32.rs):
//   0x300000 results (u64 words = EDX:EAX pairs, see R_* below); 0x300800 message IRQ count; 0x300808 event count
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
.set SEL_CODE32, 0x18
// Registers the page must preserve, loaded before the calls that do not use them as inputs.
.set KEEP_EBP, 0xB0B0B0B0
.set KEEP_EDI, 0x5EED0001
.set KEEP_ESI, 0x5EED0002

// Result word \i = EDX:EAX.
.macro STORE i
    mov [RESULTS + 8 * \i], eax
    mov [RESULTS + 8 * \i + 4], edx
.endm

.macro MSR_WRITE msr, lo, hi=0
    mov ecx, \msr
    mov eax, \lo
    mov edx, \hi
    wrmsr
.endm

// HvPostMessage from INPUT with control \ctl_hi:\ctl_lo and input GPA \in_hi:\in_lo; output GPA = the sentinels.
.macro POST ctl_lo, ctl_hi, in_lo, in_hi
    mov eax, \ctl_lo
    mov edx, \ctl_hi
    mov ecx, \in_lo
    mov ebx, \in_hi
    mov edi, KEEP_EDI
    mov esi, KEEP_ESI
    mov ebp, KEEP_EBP
    call HCPAGE
.endm

.section .text.entry, "ax"
.global _start
.code32
_start:
    cli
    mov eax, offset msg_isr
    mov edi, MSG_VECTOR
    call set_gate
    mov eax, offset evt_isr
    mov edi, EVT_VECTOR
    call set_gate
    lidt [idtr]
    mov dword ptr [0xFEE000F0], 0x1FF    // LAPIC spurious vector register: software enable

    // Detection: leaf 0x40000000 (max leaf, "Microsoft Hv"), 0x40000001 ("Hv#1"), 0x40000003 (features), leaf 1.
    mov eax, 0x40000000
    cpuid
    mov [RESULTS + 8 * 0], eax
    mov [RESULTS + 8 * 0 + 4], ebx
    mov [RESULTS + 8 * 1], ecx
    mov [RESULTS + 8 * 1 + 4], edx
    mov eax, 0x40000001
    cpuid
    mov [RESULTS + 8 * 2], eax
    mov eax, 1
    cpuid
    mov [RESULTS + 8 * 2 + 4], ecx
    mov eax, 0x40000003
    cpuid
    mov [RESULTS + 8 * 3], eax
    mov [RESULTS + 8 * 3 + 4], ebx

    MSR_WRITE 0x40000000, 0, 0x81000000      // GUEST_OS_ID
    MSR_WRITE 0x40000001, HCPAGE | 1         // HYPERCALL: enable at HCPAGE
    mov ecx, 0x40000001
    rdmsr
    STORE 4
    MSR_WRITE 0x40000083, SIMP | 1
    MSR_WRITE 0x40000082, SIEFP | 1
    MSR_WRITE 0x40000092, MSG_VECTOR         // SINT2
    MSR_WRITE 0x40000093, EVT_VECTOR         // SINT3
    MSR_WRITE 0x40000080, 1                  // SCONTROL
    mov ecx, 0x40000081                      // SVERSION
    rdmsr
    STORE 5

    // HvPostMessage(conn 1, type 1, "ping"), slow: input block by GPA in EBX:ECX.
    mov dword ptr [INPUT], 1
    mov dword ptr [INPUT + 8], 1
    mov dword ptr [INPUT + 12], 4
    mov dword ptr [INPUT + 16], 0x676E6970
    POST 0x5C, 0, INPUT, 0
    STORE 6
    mov [RESULTS + 8 * 7], ebp               // preserved across the call: EBP, EDI, ESI, EBX
    mov [RESULTS + 8 * 7 + 4], edi
    mov [RESULTS + 8 * 8], esi
    mov [RESULTS + 8 * 8 + 4], ebx

    sti
    mov ecx, 200000                          // bounded wait for both interrupts
1:  cmp dword ptr [MSG_COUNT], 1
    jb 2f
    cmp dword ptr [EVT_COUNT], 1
    jae 3f
2:  dec ecx
    jnz 1b
3:  cli
    mov eax, [MSG_COUNT]
    mov edx, [EVT_COUNT]
    STORE 9
    mov eax, [SLOT2]
    mov edx, [SLOT2 + 4]
    STORE 10
    mov eax, [SLOT2 + 16]
    mov edx, [SLOT2 + 20]
    STORE 11
    mov eax, [SIEFP + 3 * 256]
    mov edx, [SIEFP + 3 * 256 + 4]
    STORE 12

    // Fast HvSignalEvent(conn 7): EDX:EAX = 0x1005D, EBX:ECX = conn | flag << 32. Registered: doorbell ioeventfd.
    mov eax, 0x1005D
    xor edx, edx
    mov ecx, 7
    xor ebx, ebx
    call HCPAGE
    STORE 13
    // Fast HvSignalEvent(conn 8): no ioeventfd, the doorbell write exits and the host answers through ECX.
    mov eax, 0x1005D
    xor edx, edx
    mov ecx, 8
    xor ebx, ebx
    call HCPAGE
    STORE 14

    // Hostile calls.
    POST 0x5C, 0, INPUT, 1                   // input GPA 4 GiB + INPUT: not RAM
    STORE 15
    mov [RESULTS + 8 * 21], ebx
    mov [RESULTS + 8 * 21 + 4], ebp
    POST 0x5C, 0, 0x7FFFF000, 0              // above the end of RAM
    STORE 16
    POST 0x5C, 0, INPUT + 4, 0               // misaligned
    STORE 17
    POST 0x5C, 1, INPUT, 0                   // rep count 1 on a simple call
    STORE 18
    mov eax, 0x1005D                         // fast HvSignalEvent(conn 7, flag 1): the page takes the slow path
    xor edx, edx
    mov ecx, 7
    mov ebx, 1
    call HCPAGE
    STORE 19

    // Slow HvSignalEvent(conn 7): the 8-byte argument by GPA.
    mov dword ptr [INPUT + 512], 7
    mov dword ptr [INPUT + 516], 0
    mov eax, 0x5D
    xor edx, edx
    mov ecx, INPUT + 512
    xor ebx, ebx
    xor edi, edi
    xor esi, esi
    call HCPAGE
    STORE 20

    xor eax, eax
    out 0xF4, eax
    hlt

// edi = vector, eax = handler: 32-bit interrupt gate, CS 0x18
set_gate:
    lea edi, [IDT + edi * 8]
    mov [edi], ax
    mov word ptr [edi + 2], SEL_CODE32
    mov word ptr [edi + 4], 0x8E00
    shr eax, 16
    mov [edi + 6], ax
    ret

msg_isr:
    lock inc dword ptr [MSG_COUNT]
    jmp eoi
evt_isr:
    lock inc dword ptr [EVT_COUNT]
eoi:
    mov dword ptr [0xFEE000B0], 0
    // Frame: EIP, CS, EFLAGS. KVM's instruction emulator (which runs all CPL0 code on this host) cannot execute a
    // protected-mode IRET, so return by hand to the same CS: rewrite the frame to EFLAGS, EIP, then popfd; ret.
    push eax
    mov eax, [esp + 4]                   // EIP
    xchg eax, [esp + 12]                 // EFLAGS slot = EIP, EAX = EFLAGS
    mov [esp + 8], eax                   // CS slot = EFLAGS
    pop eax
    add esp, 4
    popfd
    ret

.section .rodata
idtr:
    .word 0x7FF
    .long IDT
