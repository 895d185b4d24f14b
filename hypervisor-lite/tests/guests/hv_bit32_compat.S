// hv_bit32_compat: a long-mode guest (EFER.LMA = 1) that calls the hypercall page from 64-bit code and then from
// 32-bit compatibility-mode code (CS 0x18, L = 0), where the 32-bit convention applies. Results (u64 words at
// 0x300000): 0 = 64-bit HvPostMessage (RAX), 1 = compat HvPostMessage (EDX:EAX), 2 = compat HvPostMessage with
// EBX = 1 (input GPA 4 GiB + x: not RAM), 3 = EBX after it. Hypercall page 0x310000, input 0x313000. Exits with 0.

.intel_syntax noprefix
.set RESULTS, 0x300000
.set HCPAGE, 0x310000
.set INPUT, 0x313000

.section .text.entry, "ax"
.global _start
.code64
_start:
    mov ecx, 0x40000000                  // GUEST_OS_ID
    xor eax, eax
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001                  // HYPERCALL: enable at HCPAGE
    mov eax, HCPAGE | 1
    xor edx, edx
    wrmsr
    mov dword ptr [INPUT], 1             // HvPostMessage(conn 1, type 1, "ping")
    mov dword ptr [INPUT + 8], 1
    mov dword ptr [INPUT + 12], 4
    mov dword ptr [INPUT + 16], 0x676E6970

    mov ecx, 0x5C                        // 64-bit convention: RCX, RDX, R8 -> RAX
    mov edx, INPUT
    xor r8d, r8d
    mov r10d, HCPAGE
    call r10
    mov [RESULTS], rax

    push 0x18                            // far return into compatibility mode
    lea rax, [rip + compat]
    push rax
    retfq

.code32
compat:
    mov eax, 0x5C                        // 32-bit convention: EDX:EAX, EBX:ECX, EDI:ESI -> EDX:EAX
    xor edx, edx
    mov ecx, INPUT
    xor ebx, ebx
    xor edi, edi
    xor esi, esi
    call HCPAGE
    mov [RESULTS + 8], eax
    mov [RESULTS + 12], edx
    mov eax, 0x5C
    xor edx, edx
    mov ecx, INPUT
    mov ebx, 1
    call HCPAGE
    mov [RESULTS + 16], eax
    mov [RESULTS + 20], edx
    mov [RESULTS + 24], ebx
    mov dword ptr [RESULTS + 28], 0
    jmp far ptr 0x08:long64

.code64
long64:
    xor eax, eax
    out 0xF4, eax
    hlt
