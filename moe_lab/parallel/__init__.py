"""Scale-out training: expert parallelism (EP) for the MoE layers.

Layout. The data-parallel ranks are cut into EP groups of N consecutive ranks, as torchtitan's
(dp_shard, ep) device mesh: with W ranks and EP size N there are W / N groups. Inside a group each rank
holds E / N routed experts (`ExpertParallelExperts`, rank r has experts [r E/N, (r+1) E/N)) and
exchanges tokens with the others by all-to-all; everything else (attention, router, shared experts,
embeddings) is replicated on every rank. Gradients therefore reduce over two different groups: the
replicated parameters over all W ranks, an expert shard over the W / N ranks holding the same shard
(one per EP group). With N = W every expert lives once and its shard needs no reduction.

Semantics, chosen so that results do not depend on N: each rank routes, drops for capacity and
computes its aux, z and routing statistics on its own tokens, exactly as the single-device layer does
on those tokens (and as plain data parallelism does); only where an expert runs changes. Expert counts
stay per rank, because the trainer already sums them over all ranks (`reduce_routing`), which is what
the loss-free bias update and the load monitors read. Every router works: expert choice picks among
the rank's own tokens, as under data parallelism.

Done: `parallelize_experts(model, ep_group)` shards every MoE layer in place; `gather_experts` rebuilds
a full stack from the shards; the process-group plumbing is plain `torch.distributed`, the same code
for gloo (CPU, the tests) and NCCL.

Remaining for the scale-out issue: Lightning integration (ModelParallelStrategy: build the 2-D
DeviceMesh (dp_shard, ep) and call `parallelize_experts` with the ep sub-group in `configure_model`;
reduce expert-shard gradients over the dp dim only), distributed checkpoint save/load with resharding
across EP sizes (DCP + DTensor Shard(0) placements for w_in/w_out), an EP mode in `python -m
moe_lab.bench`, and the README section.
"""

from moe_lab.parallel.expert_parallel import ExpertParallelExperts, gather_experts, parallelize_experts

__all__ = ["ExpertParallelExperts", "gather_experts", "parallelize_experts"]
