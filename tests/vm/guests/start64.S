/* Entry of the 64-bit test guests (64-bit Linux boot protocol: rsi = boot_params). */
  .section .text.start, "ax"
  .globl _start
  .code64
_start:
  lea stack_top(%rip), %rsp
  mov %rsi, %rdi
  call guest_main
  mov $0xf4, %dx          /* EXIT port: the status main returned */
  out %al, %dx
1:hlt
  jmp 1b

  .bss
  .align 16
  .skip 16384
stack_top:
