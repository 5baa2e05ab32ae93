/* A PVH guest: entered in 32-bit protected mode with ebx = hvm_start_info. Reports through
 * the EXIT port: 0x33 when the start_info magic and its command line look right, else 0x44. */
  .section .text.start, "ax"
  .globl _start
  .code32
_start:
  mov $0x44, %al
  cmpl $0x336ec578, (%ebx)        /* hvm_start_info magic */
  jne 1f
  mov 24(%ebx), %esi              /* cmdline_paddr (low half) */
  cmpb $'p', (%esi)
  jne 1f
  mov $0x33, %al
1:mov $0xf4, %dx
  out %al, %dx
2:hlt
  jmp 2b

  .section .note.Xen, "a"
  .align 4
  .long 4                         /* namesz */
  .long 4                         /* descsz */
  .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
  .asciz "Xen"
  .long _start
