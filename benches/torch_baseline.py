#!/usr/bin/env python3
"""The PyTorch baseline for `mimo bench`: the same model and weights in bf16 with transformers, a
static KV cache, torch.compile(mode="reduce-overhead") (CUDA graphs), batch 1, timed the way
mimo times itself: the cache holds CONTEXT positions, then every timed step decodes one token at
position CONTEXT (attending over CONTEXT + 1 rows), the greedy id fed back on the device, each
step between two CUDA events; the median is reported.

    python3 benches/torch_baseline.py --model CKPT_DIR --tokens 128 --context 1024 --json out.json

--model is a Hugging Face directory as `mimo random-checkpoint` writes it: config.json and
safetensors shards. Experts stored pre-quantised as MXFP4 (U8 `weight` [out, in/2] + U8
`weight_scale` [out, in/32]) are decoded to bf16 on the GPU (exactly: an E2M1 value times a
power of two is a bf16), so PyTorch runs the very values mimo runs from the FP4 codes. With
--random the checkpoint's config alone is used and the weights are transformers' own random
initialisation (for layer counts whose bf16 checkpoint would not fit on disk).

transformers >= 5 runs the experts with `experts_implementation="batched_mm"` for decode (the
backend its documentation names as CUDA-graph and fullgraph compatible and fastest for few
tokens) and "eager" for the prefill (batched_mm would copy the routed experts' weights for every
prompt token). transformers 4.x has no experts backends: its MoE loop graph-breaks, so the
compile falls back to fullgraph=False; the JSON records what ran.

Output: one JSON object (stdout, and --json FILE) with device, date, command, config, context,
ms_per_step, tokens_per_second, bytes_per_step, achieved_gbs, copy_bandwidth_gbs,
bandwidth_fraction and how it ran (versions, compile mode, experts backend, compile seconds).
"""

import argparse
import datetime
import inspect
import json
import os
import re
import statistics
import sys
import time

import torch

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def log(msg):
    print(f"torch_baseline: {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF directory (config.json + safetensors)")
    p.add_argument("--tokens", type=int, default=128, help="timed decode steps")
    p.add_argument("--context", type=int, default=1024, help="positions in the cache")
    p.add_argument("--warmup", type=int, default=16, help="untimed steps (compilation happens here)")
    p.add_argument("--random", action="store_true", help="random weights; only config.json is read")
    p.add_argument("--layers", type=int, help="keep only the first N layers")
    p.add_argument("--experts", default="batched_mm", help="transformers >= 5 decode experts backend")
    p.add_argument("--no-compile", action="store_true", help="eager decode (for debugging)")
    p.add_argument("--json", help="also write the JSON object here")
    p.add_argument(
        "--device",
        default="cuda",
        help="cuda (the benchmark) or cpu (only to test this script: host-clock timing)",
    )
    return p.parse_args()


class Timer:
    """CUDA events on the GPU; the host clock (after a synchronisation) on the CPU."""

    def __init__(self, device):
        self.cuda = device == "cuda"
        self.event = torch.cuda.Event(enable_timing=True) if self.cuda else None
        self.at = None

    def record(self):
        if self.cuda:
            self.event.record()
        else:
            self.at = time.perf_counter()

    def elapsed_time(self, end):
        if self.cuda:
            return self.event.elapsed_time(end.event)
        return (end.at - self.at) * 1e3


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def dequantize_mxfp4(codes, scales):
    """U8 codes [rows, cols/2] (element 2j in the low nibble) and E8M0 scales [rows, cols/32]."""
    lut = torch.tensor(E2M1, dtype=torch.float32, device=codes.device)
    lo = (codes & 0x0F).long()
    hi = (codes >> 4).long()
    idx = torch.stack([lo, hi], dim=-1).reshape(codes.shape[0], codes.shape[1] * 2)
    values = lut[idx]
    scale = torch.exp2(scales.float() - 127.0).repeat_interleave(32, dim=1)
    return (values * scale).to(torch.bfloat16)


EXPERT = re.compile(
    r"^(?P<prefix>.*)\.(?:mlp|block_sparse_moe)\.experts\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$"
)
PROJ = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


def shard_files(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return weight_map
    single = os.path.join(model_dir, "model.safetensors")
    if not os.path.isfile(single):
        raise SystemExit(f"error: {model_dir}: no model.safetensors or model.safetensors.index.json")
    from safetensors import safe_open

    with safe_open(single, framework="pt") as f:
        return {k: "model.safetensors" for k in f.keys()}


def load_checkpoint(model, model_dir, layers, device):
    """Copies every checkpoint tensor into the model (per-expert names into transformers 5's
    fused expert parameters when the model has those); returns the parameters never written."""
    from safetensors import safe_open

    weight_map = shard_files(model_dir)
    params = dict(model.named_parameters())
    written = set()
    handles = {}

    def tensor(name):
        file = weight_map[name]
        if file not in handles:
            handles[file] = safe_open(os.path.join(model_dir, file), framework="pt", device=device)
        return handles[file].get_tensor(name)

    def assign(name, value):
        m = EXPERT.match(name)
        layer = re.search(r"\.layers\.(\d+)\.", name)
        if layer and layers is not None and int(layer.group(1)) >= layers:
            return
        # transformers 5 renames Mixtral's block_sparse_moe to mlp in memory.
        for candidate in (name, name.replace(".block_sparse_moe.", ".mlp.")):
            if candidate in params:
                params[candidate].data.copy_(value.to(params[candidate].dtype))
                written.add(candidate)
                return
        if not m:
            raise SystemExit(f"error: checkpoint tensor {name} has no parameter in the model")
        prefix, e = m.group("prefix") + ".mlp.experts", int(m.group("e"))
        proj = PROJ.get(m.group("proj"), m.group("proj"))
        if proj == "down_proj":
            p = params[prefix + ".down_proj"]
            p.data[e].copy_(value if p.shape[1:] == value.shape else value.t())
            written.add(prefix + ".down_proj")
            return
        p = params[prefix + ".gate_up_proj"]
        rows = value.shape[0]
        half = slice(0, rows) if proj == "gate_proj" else slice(rows, 2 * rows)
        if p.shape[1] == 2 * rows:  # [E, 2I, H]
            p.data[e, half, :].copy_(value)
        else:  # [E, H, 2I]
            p.data[e, :, half].copy_(value.t())
        written.add(prefix + ".gate_up_proj")

    for name in sorted(weight_map):
        if name.endswith(".weight_scale"):
            continue
        value = tensor(name)
        if value.dtype == torch.uint8:
            value = dequantize_mxfp4(value, tensor(name + "_scale"))
        assign(name, value)
    missing = [n for n in params if n not in written]
    if getattr(model.config, "tie_word_embeddings", False):
        missing = [n for n in missing if n != "lm_head.weight"]
    return missing


def static_cache(model, max_len, device):
    from transformers import StaticCache

    attempts = [
        dict(config=model.config, max_cache_len=max_len),
        dict(config=model.config, max_batch_size=1, max_cache_len=max_len, device=device, dtype=torch.bfloat16),
        dict(config=model.config, batch_size=1, max_cache_len=max_len, device=device, dtype=torch.bfloat16),
    ]
    errors = []
    for kwargs in attempts:
        try:
            return StaticCache(**kwargs)
        except TypeError as e:
            errors.append(str(e))
    raise SystemExit(f"error: cannot construct StaticCache: {errors}")


def rewind(cache, length):
    """Makes the static cache's next write land at position `length` (transformers >= 5 keeps a
    write cursor per layer instead of taking cache_position), so that every timed step decodes at
    the same position, as mimo's do."""
    for layer in getattr(cache, "layers", []):
        cursor = getattr(layer, "cumulative_length", None)
        if isinstance(cursor, torch.Tensor):
            cursor.fill_(length)
        elif cursor is not None:
            layer.cumulative_length = length


def set_experts(model, name):
    setter = getattr(model, "set_experts_implementation", None)
    if setter is None:
        return None
    setter(name)
    return name


def step_bytes(cfg, context):
    """Bytes one decode step reads, counted as mimo's report::step_bytes counts them, for bf16."""
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or h // heads
    experts = getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts")
    top_k = cfg.num_experts_per_tok
    inter = getattr(cfg, "moe_intermediate_size", None) or cfg.intermediate_size
    qwen = cfg.model_type == "qwen3_moe"
    b = 2.0
    per_layer = (
        (heads * hd * h + 2 * kv * hd * h + h * heads * hd) * b  # attention
        + experts * h * b  # router
        + 3 * inter * h * b * min(top_k, experts)  # routed experts
        + (2 * h + (2 * hd if qwen else 0)) * b  # norms
    )
    total = layers * per_layer + h * b  # final norm
    total += cfg.vocab_size * h * b + h * b  # lm_head, embedding row
    total += layers * 2 * (context + 1) * kv * hd * 2  # K and V cache, bf16
    return total


def copy_bandwidth_gbs(device):
    n = 1 << 30 if device == "cuda" else 1 << 26
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = Timer(device), Timer(device)
    reps = 20
    synchronize(device)
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    synchronize(device)
    return 2.0 * n * reps / (start.elapsed_time(end) / 1e3) / 1e9


def main():
    args = parse_args()
    started = time.time()
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device visible to PyTorch")
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.model)
    if args.layers:
        config.num_hidden_layers = args.layers
    max_len = args.context + 1
    log(f"building {config.model_type} with {config.num_hidden_layers} layers in bf16 on {dev}")
    with torch.device(dev):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        except TypeError:  # transformers < 4.56 names it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.eval()
    if not args.random:
        missing = load_checkpoint(model, args.model, args.layers, dev)
        if missing:
            raise SystemExit(f"error: parameters not in the checkpoint: {missing[:5]} ({len(missing)} in all)")
    load_seconds = time.time() - started
    synchronize(dev)

    vocab = config.vocab_size
    prompt = torch.tensor([[(p * 7919 + 13) % vocab for p in range(args.context)]], device=dev)
    cache = static_cache(model, max_len, dev)
    # transformers 4.x places new keys by cache_position; 5.x by the cache's own cursor (rewind).
    takes_cache_position = "cache_position" in inspect.signature(model.model.forward).parameters

    def positions_kwargs(positions):
        kw = {"position_ids": positions[None, :]}
        if takes_cache_position:
            kw["cache_position"] = positions
        return kw

    with torch.inference_mode():
        prefill_backend = set_experts(model, "eager")
        if args.context > 0:
            model(
                input_ids=prompt,
                past_key_values=cache,
                use_cache=True,
                **positions_kwargs(torch.arange(args.context, device=dev)),
            )
        decode_backend = set_experts(model, args.experts)
    log(f"prefilled {args.context} positions (experts backend: {prefill_backend or 'transformers 4.x loop'})")

    pos = torch.tensor([args.context], device=dev)
    forward = model.forward
    compile_info = {"mode": None, "fullgraph": None, "error": None}
    if not args.no_compile:
        for fullgraph in (decode_backend is not None, False):
            try:
                forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=fullgraph)
                compile_info.update(mode="reduce-overhead", fullgraph=fullgraph)
                break
            except Exception as e:  # noqa: BLE001 - recorded in the JSON
                compile_info["error"] = repr(e)

    def decode(tok):
        if compile_info["mode"] and dev == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        out = forward(input_ids=tok, past_key_values=cache, use_cache=True, **positions_kwargs(pos))
        return out.logits[:, -1, :].argmax(-1, keepdim=True)

    tok = torch.tensor([[(args.context * 7919 + 13) % vocab]], device=dev)
    compile_started = time.time()
    with torch.inference_mode():
        try:
            tok = decode(tok)
            rewind(cache, args.context)
        except Exception as e:  # noqa: BLE001 - a failed compile falls back to eager, recorded
            if compile_info["mode"] is None:
                raise
            log(f"compiled decode failed ({e!r}); timing eager decode")
            compile_info.update(error=repr(e), mode=None, fullgraph=None)
            forward = model.forward
            rewind(cache, args.context)
            tok = decode(tok)
            rewind(cache, args.context)
        synchronize(dev)
        compile_seconds = time.time() - compile_started
        for _ in range(max(args.warmup - 1, 0)):
            tok = decode(tok)
            rewind(cache, args.context)
        synchronize(dev)
        events = [(Timer(dev), Timer(dev)) for _ in range(args.tokens)]
        for start, end in events:
            start.record()
            tok = decode(tok)
            if dev != "cuda":
                tok = tok.clone()  # the host clock needs the step done
            end.record()
            rewind(cache, args.context)  # between the events: not timed
        synchronize(dev)
    step_ms = [s.elapsed_time(e) for s, e in events]
    stream_ms = events[0][0].elapsed_time(events[-1][1]) / len(events)
    ms = statistics.median(step_ms)
    bytes_per_step = step_bytes(config, args.context)
    achieved = bytes_per_step / (ms / 1e3) / 1e9
    copy = copy_bandwidth_gbs(dev)
    result = {
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
        "backend": "pytorch",
        "timing": "cuda-events" if dev == "cuda" else "host-clock",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python3"] + sys.argv),
        "model": args.model,
        "config": {
            "architecture": config.model_type,
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "experts": getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None),
            "experts_per_token": config.num_experts_per_tok,
            "vocab_size": vocab,
            "dtype": "bfloat16",
            "random_weights": args.random,
        },
        "context": args.context,
        "tokens": args.tokens,
        "warmup": args.warmup,
        "ms_per_step": ms,
        "ms_per_step_min": min(step_ms),
        "stream_ms_per_step": stream_ms,
        "tokens_per_second": 1e3 / ms,
        "bytes_per_step": bytes_per_step,
        "achieved_gbs": achieved,
        "copy_bandwidth_gbs": copy,
        "bandwidth_fraction": achieved / copy,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "static_cache": True,
        "batch_size": 1,
        "compile": compile_info,
        "experts_implementation": decode_backend,
        "compile_seconds": compile_seconds,
        "load_seconds": load_seconds,
        "seconds": time.time() - started,
    }
    text = json.dumps(result)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
