// hv_counts: exit accounting of HvSignalEvent. Enables the hypercall page, then according to the mode word at
// 0x2FF000: 0 = nothing more, 1 = N fast HvSignalEvent(conn 7) (doorbell ioeventfd), 2 = N slow HvSignalEvent
// (input at 0x313000), 3 = N fast HvSignalEvent(conn 8) (no ioeventfd: doorbell exit). N is the u64 at 0x2FF008.
// The status of the last call is stored at 0x300000. Hypercall page at 0x310000. Exits through port 0xF4 with 0.
// The calls run at CPL3 (natively on KVM-PVM, like the real guest kernel's drivers; CPL0 would be emulated and
// hide the VM exits): own GDT with user segments, TSS at 0x316000 whose I/O bitmap opens every port.

.intel_syntax noprefix
.set CONFIG, 0x2FF000
.set RESULTS, 0x300000
.set HCPAGE, 0x310000
.set INPUT, 0x313000
.set TSS, 0x316000
.set TSS_LIMIT, 104 + 8192

.section .text.entry, "ax"
.global _start
.code64
_start:
    mov ecx, 0x40000000                  // GUEST_OS_ID
    xor eax, eax
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001                  // HYPERCALL
    mov eax, HCPAGE | 1
    xor edx, edx
    wrmsr
    mov qword ptr [INPUT], 7
    mov rbx, [CONFIG + 8]
    mov rax, [CONFIG]
    mov r12d, 0x1005D                    // control: fast signal
    mov r13d, 7                          // argument
    cmp rax, 1
    je to_user
    mov r12d, 0x5D                       // slow signal, input GPA
    mov r13d, INPUT
    cmp rax, 2
    je to_user
    mov r12d, 0x1005D
    mov r13d, 8
    cmp rax, 3
    jne done

to_user:                                 // Enter CPL3: GDT with user segments and a TSS (I/O bitmap all zero = every port open; then 0xFF).
    mov word ptr [TSS + 102], 104
    mov byte ptr [TSS + TSS_LIMIT], 0xFF
    mov [TSS + 4], rsp                   // RSP0
    mov ecx, 0xC0000081                  // STAR/LSTAR as the guest kernel sets them (not needed by this loop)
    xor eax, eax
    mov edx, 0x00100008
    wrmsr
    mov ecx, 0xC0000082
    lea rax, [rip + done]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    lgdt [rip + gdt_desc]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, 0x28
    ltr ax
    mov rax, rsp
    push 0x1B                            // SS: user data
    push rax                             // RSP
    push 0x202                           // RFLAGS: IF=1, like the guest kernel's CPL3 (no LAPIC here: nothing arrives)
    push 0x23                            // CS: user code
    lea rax, [rip + loop]
    push rax
    iretq
loop:
    test rbx, rbx
    jz done
    mov rcx, r12
    mov rdx, r13
    xor r8d, r8d
    mov r10d, HCPAGE
    call r10
    mov [RESULTS], rax
    dec rbx
    jmp loop
done:
    xor eax, eax
    out 0xF4, eax
    hlt

.balign 16
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF             // 0x08 kernel code64
    .quad 0x00CF92000000FFFF             // 0x10 kernel data
    .quad 0x00CFF2000000FFFF             // 0x18 user data (DPL3)
    .quad 0x00AFFA000000FFFF             // 0x20 user code64 (DPL3)
    .quad 0x0000893160002068             // 0x28 TSS at 0x316000, limit 104 + 8192
    .quad 0
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt
