/* Drops to CPL3 (where code runs natively, like the real guest's Rust), then: reads N from port 0x708;
 * marker (0x70C); N matching 32-bit writes of 0x5D to the ioeventfd port 0x700; one non-matching write (0x5E) to
 * 0x700; marker; N writes to the plain port 0x704; marker; exit 0. */
#include "common.inc"
        .code64
        .text
        .globl  _start
_start:
        TO_CPL3 user
user:
        mov     $0x708, %dx
        in      %dx, %eax
        mov     %eax, %r12d
        mov     $0x70c, %dx
        out     %eax, %dx               /* marker 0 */
        mov     %r12d, %ecx
        mov     $0x700, %dx
        mov     $0x5d, %eax
1:      out     %eax, %dx               /* ioeventfd: no user exit */
        loop    1b
        mov     $0x5e, %eax
        out     %eax, %dx               /* datamatch miss: user exit */
        mov     $0x70c, %dx
        out     %eax, %dx               /* marker 1 */
        mov     %r12d, %ecx
        mov     $0x704, %dx
2:      out     %eax, %dx               /* plain port: one user exit each */
        loop    2b
        mov     $0x70c, %dx
        out     %eax, %dx               /* marker 2 */
        EXIT    0
