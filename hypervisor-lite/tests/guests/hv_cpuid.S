// hv_cpuid: reads the hypervisor CPUID leaves at CPL0 (where KVM returns the KVM_SET_CPUID2 table) and stores
// EAX, EBX, ECX, EDX of leaves 0x40000000..0x40000005 at 0x300000 + 16 * (leaf - 0x40000000) (u32 each), and
// leaf 1 ECX at 0x300080. Exits through port 0xF4 with 0.

.intel_syntax noprefix
.set RESULTS, 0x300000

.section .text.entry, "ax"
.global _start
.code64
_start:
    mov esi, 0x40000000
    mov edi, RESULTS
1:  mov eax, esi
    xor ecx, ecx
    cpuid
    mov [rdi], eax
    mov [rdi + 4], ebx
    mov [rdi + 8], ecx
    mov [rdi + 12], edx
    add edi, 16
    inc esi
    cmp esi, 0x40000006
    jb 1b
    mov eax, 1
    xor ecx, ecx
    cpuid
    mov [RESULTS + 0x80], ecx
    xor eax, eax
    out 0xF4, eax
    hlt
