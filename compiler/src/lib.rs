//! mimo-compiler: fuse, tile, schedule and generate the persistent CUDA megakernel.
