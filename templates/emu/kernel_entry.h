// Included after kernel.cu in the emulator's build: the entry point its runtime calls on every
// thread, and the parameter block's size for the host to check its own layout against.
#pragma once

extern "C" void mimo_emu_kernel_entry(const void* params) { mimo_megakernel(*(const KernelParams*)params); }
extern "C" unsigned long long mimo_emu_params_bytes() { return sizeof(KernelParams); }
