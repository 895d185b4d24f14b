// viridian guest kernel: the CPL0 shim.
//
// Everything here runs at CPL0, where this machine's KVM (KVM-PVM) emulates every instruction (~1 us each)
// and SSE faults. So the shim is integer-only and as short as possible. It:
//   1. builds identity page tables (2 MiB pages, user-accessible) for the first 4 GiB and the RAM above them,
//      and loads CR3;
//   2. loads a GDT (kernel/user code+data, a TSS whose I/O bitmap opens every port to CPL3) and an IDT of
//      uniform stubs;
//   3. enables the local APIC and `iretq`s to the Rust kernel at CPL3 with interrupts enabled.
// After boot CPL0 is entered only through:
//   - the `int3` service gate (rax = service): privileged work the CPL3 kernel cannot do (rdmsr/wrmsr, cpuid,
//     hlt, IPIs);
//   - interrupt stubs: count the vector in this CPU's per-CPU counters, EOI the LAPIC, return;
//   - exception stubs: report the vector and faulting RIP to the host on port 0x502, then halt forever.
// Every VP enters `_start` at once. The bootstrap processor (VP index 0 in RDI) builds the shared tables
// (CPUID snapshot, page tables, IDT), publishes `tables_ready`, then sets itself up. Each application
// processor (VP 1..MAX_CPUS) waits for `tables_ready`, loads the shared page tables and sets itself up the
// same way (`cpu_setup`): its own TSS (RSP0, IST1) and TSS descriptor, the shared GDT and IDT, its LAPIC,
// its VP index in its per-CPU block, its own user stack, then `iretq`s to Rust: the BSP to `kernel_main`,
// an AP to `ap_main(vp)`. VPs beyond MAX_CPUS park in `hlt` with interrupts off.
//
// Per-CPU block (PERCPU_SIZE bytes, aligned to its size): the data page (interrupt total, VP index,
// per-vector interrupt counts), then the IST1 stack, then the kernel stack (RSP0). Every stack CPL0 runs on
// lies in the block, so CPL0 code finds its CPU's block by rounding RSP down to PERCPU_SIZE.
//
// Register contract at entry (set by hypervisor-lite): 64-bit mode, RDI = VP index, RSI = VP count. The host
// leaves the boot info (see main.rs) at BOOT_INFO.


.set KCODE, 0x08
.set KDATA, 0x10
.set UDATA, 0x1b
.set UCODE, 0x23
.set TSS_SEL, 0x28
.set LAPIC, 0xfee00000
.set TSS_LIMIT, 104 + 8192
.set TSS_STRIDE, 0x2080                 // one TSS per CPU: 104 bytes, the I/O bitmap, its 0xff end byte
.set PERCPU_FAULT_TOP, 0x2000           // IST1 stack: [0x1000, 0x2000) of the block
.set PERCPU_KSTACK_TOP, {PERCPU_SIZE}   // kernel stack: [0x2000, PERCPU_SIZE)

.section .text.entry, "ax"
.global _start
.code64
_start:
    cli
    test edi, edi
    jnz ap_entry
    mov eax, {MAX_CPUS}
    cmp esi, eax
    cmova esi, eax
    mov [rip + smp_cpu_count], esi

    // Snapshot the CPUID leaves the drivers need (1 and 0x40000000..=0x40000005) now, while this code is
    // still run by KVM's emulator: after the first trip through CPL3, KVM-PVM runs our CPL0 code natively
    // in hardware ring 3, where CPUID returns the real machine's values instead of the hypervisor's.
    lea r8, [rip + cpuid_table]
    mov r9d, 1
    mov r10d, 0x40000000
10: mov eax, r9d
    xor ecx, ecx
    cpuid
    mov [r8], r9d
    mov [r8 + 4], eax
    mov [r8 + 8], ebx
    mov [r8 + 12], ecx
    mov [r8 + 16], edx
    add r8, 20
    mov r9d, r10d
    inc r10d
    cmp r9d, 0x40000006
    jne 10b

    // Page tables: PML4[0] -> PDPT; PDPT[i] -> PD i; PD entries map 2 MiB each (P|RW|US|PS), identity, over
    // the first 4 GiB (low RAM and the MMIO hole) and on to the end of the RAM above the hole that the boot
    // info reports, at most {PT_MAX_GIB} GiB. 2 MiB pages because this KVM-PVM faults on 1 GiB ones. Filled from
    // the top down, 3 emulated instructions an entry.
    mov rcx, [{BOOT_HIGH_RAM_END}]
    add rcx, 0x3fffffff
    shr rcx, 30                         // GiB to map
    mov eax, 4
    cmp rcx, rax
    cmovb rcx, rax
    mov eax, {PT_MAX_GIB}
    cmp rcx, rax
    cmova rcx, rax
    mov r11, rcx                        // page directories
    shl rcx, 9                          // 2 MiB entries
    mov rax, rcx
    shl rax, 21
    sub rax, 0x200000 - 0x87            // the last entry: (entries - 1) * 2 MiB | P|RW|US|PS
    lea rdi, [rip + pd_tables]
1:  mov [rdi + rcx * 8 - 8], rax
    sub rax, 0x200000
    loop 1b
    lea rax, [rip + pd_tables]
    or rax, 0x7
    lea rdi, [rip + pdpt]
    mov rcx, r11
2:  mov [rdi], rax
    add rax, 0x1000
    add rdi, 8
    loop 2b
    lea rax, [rip + pdpt]
    or rax, 0x7
    mov [rip + pml4], rax
    lea rax, [rip + pml4]
    mov cr3, rax
    // IDT: vector v -> stub_base + v * 16; exceptions (0..31) on IST1.
    lea rdi, [rip + idt]
    lea rdx, [rip + stubs]
    xor ecx, ecx
3:  mov rax, rdx
    mov [rdi], ax
    mov word ptr [rdi + 2], KCODE
    mov word ptr [rdi + 4], 0x8e00
    cmp ecx, 32
    jae 4f
    mov byte ptr [rdi + 4], 1
    cmp ecx, 3
    jne 4f
    mov byte ptr [rdi + 5], 0xee        // int3: a DPL3 interrupt gate (the service gate)
4:  shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    add rdi, 16
    add rdx, 16
    inc ecx
    cmp ecx, 256
    jne 3b
    xor edi, edi
    jmp cpu_setup

// An application processor: wait (on the host's boot stack and tables) until the BSP has built the shared
// tables, then switch to them and set this CPU up.
ap_entry:
    cmp edi, {MAX_CPUS}
    jae park
1:  pause
    cmp dword ptr [rip + tables_ready], 0
    je 1b
    lea rax, [rip + pml4]
    mov cr3, rax

// Per-CPU setup, on every CPU. In: edi = VP index (< MAX_CPUS), the shared page tables loaded, IF = 0.
cpu_setup:
    mov r12d, edi
    mov rbx, r12
    shl rbx, {PERCPU_SHIFT}
    lea rax, [rip + percpu]
    add rbx, rax                        // rbx = this CPU's block
    mov [rbx + {PERCPU_VP}], r12
    lea rsp, [rbx + PERCPU_KSTACK_TOP]
    imul rsi, r12, TSS_STRIDE
    lea rax, [rip + tss]
    add rsi, rax                        // rsi = this CPU's TSS

    // Its TSS descriptor (GDT slot TSS_SEL + 16 * vp; the base is only known after linking).
    mov rdi, r12
    shl rdi, 4
    lea rax, [rip + gdt_tss]
    add rdi, rax
    mov rax, rsi
    mov word ptr [rdi], TSS_LIMIT
    mov [rdi + 2], ax
    shr rax, 16
    mov [rdi + 4], al
    mov byte ptr [rdi + 5], 0x89
    mov byte ptr [rdi + 6], 0
    shr rax, 8
    mov [rdi + 7], al
    shr rax, 8
    mov [rdi + 8], eax
    lea rax, [rbx + PERCPU_KSTACK_TOP]
    mov [rsi + 4], rax                  // RSP0: stack for interrupts taken at CPL3
    lea rax, [rbx + PERCPU_FAULT_TOP]
    mov [rsi + 36], rax                 // IST1: stack for exceptions and the service gate
    mov word ptr [rsi + 102], 104       // I/O permission bitmap right after the TSS (all zero = all ports open)
    mov byte ptr [rsi + 104 + 8192], 0xff

    lgdt [rip + gdt_ptr]
    mov ax, KDATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, r12d
    shl eax, 4
    add eax, TSS_SEL
    ltr ax
    lidt [rip + idt_ptr]

    // Local APIC: software enable, spurious vector 0xff, accept every priority.
    mov eax, LAPIC
    mov dword ptr [rax + 0xf0], 0x1ff
    mov dword ptr [rax + 0x80], 0
    // Every table the APs share is built and the BSP's LAPIC takes their IPIs: release them (the BSP's
    // store counts; an AP stores what is already there).
    mov dword ptr [rip + tables_ready], 1

    // Drop to CPL3 on this CPU's user stack, RSP % 16 == 8 as after a call: the BSP to kernel_main(boot
    // info), an AP to ap_main(vp).
    lea rax, [r12 + 1]
    shl rax, {USTACK_SHIFT}
    lea rcx, [rip + user_stacks]
    add rax, rcx
    sub rax, 8
    push UDATA
    push rax
    push 0x202
    push UCODE
    test r12d, r12d
    jnz 2f
    lea rax, [rip + kernel_main]
    push rax
    mov edi, {BOOT_INFO}
    iretq
2:  lea rax, [rip + ap_main]
    push rax
    mov edi, r12d
    iretq

park:
    cli
    hlt
    jmp park

// The service gate. In: rax = service, rdi/rsi/rdx = arguments. Out: rax (+ rdi/rsi/rdx for cpuid).
// CPL3 enters it with `int3` (vector 3 is the one DPL3 gate; the CPU pushed an IRETQ frame on IST1 and
// cleared IF). Not SYSCALL: on this KVM-PVM host the SYSCALL target runs in a mode where privileged
// instructions (rdmsr, wrmsr, sysret) raise #GP instead of being emulated, while the int3 path reaches
// KVM's emulator, so MSR accesses exit to the VMM as they should.
int3_gate:
    add rsp, 8                          // the stub's vector
    push rcx
    push r11
    call service
    pop r11
    pop rcx
    iretq

service:
    cmp eax, 1
    je sys_rdmsr
    cmp eax, 2
    je sys_wrmsr
    cmp eax, 3
    je sys_cpuid
    cmp eax, 4
    je sys_halt
    cmp eax, 5
    je sys_ipi
    mov rax, -1
    ret

// rdmsr(rdi = msr) -> rax
sys_rdmsr:
    mov ecx, edi
    rdmsr
    shl rdx, 32
    or rax, rdx
    ret
// wrmsr(rdi = msr, rsi = value) -> 0
sys_wrmsr:
    mov ecx, edi
    mov eax, esi
    mov rdx, rsi
    shr rdx, 32
    wrmsr
    xor eax, eax
    ret
// cpuid(rdi = leaf, rsi = subleaf) -> eax, edi = ebx, esi = ecx, edx.
sys_cpuid:
    push rbx
    mov eax, edi
    mov ecx, esi
    cpuid
    mov edi, ebx
    mov esi, ecx
    pop rbx
    ret
// halt(rdi = this CPU's interrupt total the caller last saw): sleep until an interrupt, unless one already
// arrived. Interrupts are off in the gate, so the check and `sti; hlt` cannot lose a wakeup.
sys_halt:
    mov rcx, rsp
    and rcx, -{PERCPU_SIZE}
    cmp rdi, [rcx + {PERCPU_IRQ_TOTAL}]
    jne 5f
    sti
    hlt
    cli
5:  mov rax, [rcx + {PERCPU_IRQ_TOTAL}]
    ret
// ipi(rdi = APIC id, rsi = vector): a fixed, edge-triggered IPI through the local APIC's ICR -> 0.
sys_ipi:
    mov eax, LAPIC
    shl edi, 24
    mov dword ptr [rax + 0x310], edi
    and esi, 0xff
    or esi, 0x4000
    mov dword ptr [rax + 0x300], esi
    xor eax, eax
    ret

// 256 uniform 16-byte stubs: push the vector, jump to the common path.
.balign 16
stubs:
.set vec, 0
.rept 256
    .balign 16
    .byte 0x68                       // push imm32 (sign-extended: vectors < 2^31)
    .long vec
    jmp stub_common
.set vec, vec + 1
.endr

stub_common:
    cmp qword ptr [rsp], 3
    je int3_gate
    cmp qword ptr [rsp], 32
    jb fault
    push rax
    push rcx
    mov rax, [rsp + 16]
    mov rcx, rsp
    and rcx, -{PERCPU_SIZE}             // this CPU's block: both stacks CPL0 takes interrupts on lie in it
    lock inc qword ptr [rcx + {PERCPU_IRQ_COUNTS} + rax * 8]
    lock inc qword ptr [rcx + {PERCPU_IRQ_TOTAL}]
    mov eax, LAPIC
    mov dword ptr [rax + 0xb0], 0
    pop rcx
    pop rax
    add rsp, 8
    iretq

// An exception: tell the host the vector and the faulting RIP (vectors with an error code have it
// between the vector and the RIP), then stop.
fault:
    mov rax, [rsp]
    mov rcx, 0x27d00          // bit mask of vectors 8, 10-14, 17 that push an error code
    bt rcx, rax
    jnc 6f
    mov rcx, [rsp + 16]
    jmp 7f
6:  mov rcx, [rsp + 8]
7:  mov dx, {FAULT_PORT}
    out dx, eax
    mov rax, rcx
    out dx, eax
    shr rax, 32
    out dx, eax
8:  cli
    hlt
    jmp 8b


.section .data
.balign 16
// The GDT must be writable (the TSS descriptor is filled in at boot and `ltr` marks it busy).
gdt_rw:
    .quad 0
    .quad 0x00209a0000000000
    .quad 0x0000920000000000
    .quad 0x0000f20000000000
    .quad 0x0020fa0000000000
gdt_tss:                                // one 16-byte TSS descriptor per CPU
    .skip 16 * {MAX_CPUS}
gdt_rw_end:
gdt_ptr:
    .word gdt_rw_end - gdt_rw - 1
    .quad gdt_rw
idt_ptr:
    .word 256 * 16 - 1
    .quad idt

.section .bss
.balign 4096
pml4: .skip 4096
pdpt: .skip 4096
pd_tables: .skip {PT_MAX_GIB} * 4096
idt: .skip 256 * 16
tss: .skip TSS_STRIDE * {MAX_CPUS}
// Set by the BSP once the tables the APs share are built.
tables_ready: .skip 4
// VPs running the kernel: min(RSI at entry, MAX_CPUS).
.global smp_cpu_count
smp_cpu_count: .skip 4
// Rows of u32 (leaf, eax, ebx, ecx, edx) for leaf 1 and 0x40000000..=0x40000005, filled at boot.
.global cpuid_table
cpuid_table: .skip 7 * 20
// One block per CPU: data page, IST1 stack, kernel stack (see the top of this file).
.balign {PERCPU_SIZE}
.global percpu
percpu: .skip {PERCPU_SIZE} * {MAX_CPUS}
// One user stack per CPU, aligned to its size (Rust finds its VP from RSP).
.balign 1 << {USTACK_SHIFT}
.global user_stacks
user_stacks: .skip (1 << {USTACK_SHIFT}) * {MAX_CPUS}
