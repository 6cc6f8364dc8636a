"""Small transformers models built from configs (nothing is downloaded), for fidelity benchmarks.

``factory(name)`` returns ``(model, example_inputs, loss_fn)`` like the examples' factories: the
model maps the inputs to one tensor (logits), ``loss_fn`` maps that to a scalar. Models are in
training mode (dropout on where the architecture has it), two layers, hidden size 128.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN, LAYERS, HEADS, VOCAB, SEQ, BATCH = 128, 2, 4, 512, 256, 4
MODELS = ("hf_gpt2", "hf_llama", "hf_bert", "hf_t5", "hf_vit", "hf_mixtral",
          "hf_qwen2", "hf_neox", "hf_convnext", "hf_whisper")
MEL_BINS, AUDIO_FRAMES, DECODER_SEQ = 40, 256, 64  # hf_whisper: a log-mel input and the decoder's tokens


class LogitsOnly(nn.Module):
    """A transformers model whose forward returns only ``.logits`` (one tensor to the loss); its
    inputs passed by the names ``keywords`` where given, else in order."""

    def __init__(self, model: nn.Module, keywords: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model, self.keywords = model, keywords

    def forward(self, *args):
        return (self.model(**dict(zip(self.keywords, args))) if self.keywords else self.model(*args)).logits


def _config(name: str):
    import transformers as T

    d, n, h = HIDDEN, LAYERS, HEADS
    if name == "hf_gpt2":
        return T.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=d, n_layer=n, n_head=h, bos_token_id=0,
                            eos_token_id=0)
    if name == "hf_llama":
        return T.LlamaConfig(vocab_size=VOCAB, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=n,
                             num_attention_heads=h, num_key_value_heads=h // 2, max_position_embeddings=SEQ)
    if name == "hf_bert":
        return T.BertConfig(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=n, num_attention_heads=h,
                            intermediate_size=4 * d, max_position_embeddings=SEQ)
    if name == "hf_t5":
        return T.T5Config(vocab_size=VOCAB, d_model=d, d_kv=d // h, d_ff=4 * d, num_layers=n,
                          num_decoder_layers=n, num_heads=h)
    if name == "hf_vit":
        return T.ViTConfig(image_size=64, patch_size=8, hidden_size=d, num_hidden_layers=n,
                           num_attention_heads=h, intermediate_size=4 * d, num_labels=10)
    if name == "hf_mixtral":
        return T.MixtralConfig(vocab_size=VOCAB, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n,
                               num_attention_heads=h, num_key_value_heads=h // 2, num_local_experts=4,
                               num_experts_per_tok=2, max_position_embeddings=SEQ)
    return _held_out_config(name)


def _held_out_config(name: str):
    """Held-out architectures first measured in session 16: a decoder with biased q/k/v (Qwen2), one
    with parallel attention and MLP and partial rotary (GPT-NeoX), a convolutional vision model with
    depthwise convolutions and LayerNorm (ConvNeXt) and an audio encoder-decoder with a conv stem
    (Whisper)."""
    import transformers as T

    d, n, h = HIDDEN, LAYERS, HEADS
    if name == "hf_qwen2":
        return T.Qwen2Config(vocab_size=VOCAB, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=n,
                             num_attention_heads=h, num_key_value_heads=h // 2, max_position_embeddings=SEQ)
    if name == "hf_neox":
        return T.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=n,
                               num_attention_heads=h, max_position_embeddings=SEQ)
    if name == "hf_convnext":
        return T.ConvNextConfig(num_channels=3, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                                num_labels=10, image_size=64)
    if name == "hf_whisper":
        return T.WhisperConfig(vocab_size=VOCAB, d_model=d, encoder_layers=n, decoder_layers=n,
                               encoder_attention_heads=h, decoder_attention_heads=h, encoder_ffn_dim=4 * d,
                               decoder_ffn_dim=4 * d, num_mel_bins=MEL_BINS, max_source_positions=AUDIO_FRAMES // 2,
                               max_target_positions=SEQ, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                               decoder_start_token_id=0)
    raise KeyError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def _model_class(name: str):
    import transformers as T

    return {"hf_gpt2": T.GPT2LMHeadModel, "hf_llama": T.LlamaForCausalLM, "hf_bert": T.BertForMaskedLM,
            "hf_t5": T.T5ForConditionalGeneration, "hf_vit": T.ViTForImageClassification,
            "hf_mixtral": T.MixtralForCausalLM, "hf_qwen2": T.Qwen2ForCausalLM, "hf_neox": T.GPTNeoXForCausalLM,
            "hf_convnext": T.ConvNextForImageClassification, "hf_whisper": T.WhisperForConditionalGeneration}[name]


def factory(name: str):
    """(model, example_inputs, loss_fn) of a small transformers model, seeded."""
    torch.manual_seed(0)
    config = _config(name)
    config._attn_implementation = "eager" if name == "hf_convnext" else "sdpa"  # ConvNeXt has no attention
    keywords = ("input_features", "decoder_input_ids") if name == "hf_whisper" else ()
    model = LogitsOnly(_model_class(name)(config), keywords).train()
    if name in ("hf_vit", "hf_convnext"):
        labels = torch.randint(0, 10, (BATCH,))
        return model, (torch.randn(BATCH, 3, 64, 64),), lambda logits: F.cross_entropy(logits, labels)
    if name == "hf_whisper":
        tokens = torch.randint(0, VOCAB, (BATCH, DECODER_SEQ))
        targets = torch.randint(0, VOCAB, (BATCH, DECODER_SEQ))
        return (model, (torch.randn(BATCH, MEL_BINS, AUDIO_FRAMES), tokens),
                lambda logits: F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    targets = torch.randint(0, VOCAB, (BATCH, SEQ))
    inputs = (tokens, torch.ones_like(tokens), tokens) if name == "hf_t5" else (tokens,)
    return model, inputs, lambda logits: F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
