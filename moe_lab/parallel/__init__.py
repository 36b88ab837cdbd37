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

Modules: `expert_parallel` (the sharded layer: `parallelize_experts(model, ep_group)` shards every MoE
layer in place, `gather_experts` rebuilds a full stack), `ep_training` (what training adds: the groups, the
shards' gradient reduction, the clipping norm over all shards, checkpoints in the single-device layout),
`ep_bench` (`python -m moe_lab.bench ep`). Plain `torch.distributed`: the same code for gloo (CPU, the
tests) and NCCL.

Training (`trainer.expert_parallel: N`, moe_lab.training.lit): Lightning's DDP strategy as it is. In
`configure_model`, once the process group exists, the experts are sharded and named in
`_ddp_params_and_buffers_to_ignore`, so DDP broadcasts and averages only the replicated parameters; the
shards' gradients are reduced in `on_before_optimizer_step` (sum over the replicas, / W: DDP's mean), the
clipping norm counts every shard once (`configure_gradient_clipping`), and checkpoints are gathered on save
and sharded on load (`on_save_checkpoint` / `on_load_checkpoint`), Adam state included, so any N (1 too,
and the export) reads them.
"""

from moe_lab.parallel.expert_parallel import ExpertParallelExperts, gather_experts, parallelize_experts

__all__ = ["ExpertParallelExperts", "gather_experts", "parallelize_experts"]
