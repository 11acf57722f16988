// TASK_ACCEPT: DFlash acceptance of a verified block (ir/src/ops/accept.rs). block [B] is what the
// target verified (the last committed token, then B - 1 drafts); posterior [B] the target's token
// after each. a = the number of leading i with block[i + 1] == posterior[i] (0 ..= B - 1);
//   accepted[0] = a;  committed[i] = i <= a ? posterior[i] : -1
// One unit, run by warp 0: lanes compare 32 drafts at a time and a ballot finds the first
// mismatch.
#pragma once

#include "common/memory.cuh"

namespace mimo {

__device__ __noinline__ u32 run_accept(const KernelParams& p, const AcceptArgs& a, u32, u32, u8*) {
    if (warp_id() != 0) return kOk;
    const u32 B = a.block_len, lane = lane_id();
    const float* block = p.arena + a.block;
    const float* posterior = p.arena + a.posterior;
    u32 accepted = B - 1;  // every draft matches unless a mismatch is found below
    for (u32 base = 0; base + 1 < B; base += 32) {
        const u32 i = base + lane;
        const bool mismatch = i + 1 < B && ld_act_i32(block + i + 1) != ld_act_i32(posterior + i);
        const u32 ballot = __ballot_sync(kFullMask, mismatch);
        if (ballot != 0u) {
            accepted = base + (u32)(__ffs((int)ballot) - 1);
            break;
        }
    }
    if (lane == 0) st_i32(p.arena + a.accepted, (i32)accepted);
    for (u32 i = lane; i < B; i += 32)
        st_i32(p.arena + a.committed + i, i <= accepted ? ld_act_i32(posterior + i) : -1);
    return kOk;
}

}  // namespace mimo
