"""Learned prompt context (CoOp-style) for the frozen open_clip text tower.

A class name is written after M context tokens, "X X X X meadow.", and the embeddings of the M
placeholders are replaced by learned vectors before the frozen text transformer runs; the
end-of-text token's output is the class embedding, as for any prompt. The context is shared by
all classes (so a class never seen in training is encoded with it too); optionally each seen
class adds its own context on top (class-specific context).

The context starts as the token embeddings of INIT_WORDS ("a photo of a"), and what it changes is
used as a residual on the template-ensemble embedding the engine already uses:

    text(c) = normalise(ensemble(c) + offset(c) + ĉ(context, c) - ĉ(initial context, c))

(ĉ: the normalised context-prompt embedding), so an untrained context gives exactly the
engine's embedding and training moves it from there.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ModelError
from .defaults import DEFAULT_CONTEXT_TOKENS

INIT_WORDS = "a photo of a"
PLACEHOLDER = "X"


def supports_context(model) -> bool:
    """open_clip's plain CLIP text tower (token embedding, causal transformer, argmax pooling)."""
    from open_clip.model import CLIP

    return (isinstance(model, CLIP) and getattr(model, "text_pool_type", "argmax") == "argmax"
            and getattr(model, "attn_mask", None) is not None)


def initial_context(model, tokenizer, tokens: int = DEFAULT_CONTEXT_TOKENS,
                    words: str = INIT_WORDS) -> torch.Tensor:
    """(M, W) token embeddings of `words` (cut or padded with the placeholder to M tokens)."""
    device = model.token_embedding.weight.device
    ids = tokenizer([words])[0]
    end = int(ids.argmax())                          # the end-of-text token has the largest id
    body = ids[1:end].tolist()[:tokens]
    if len(body) < tokens:
        filler = tokenizer([PLACEHOLDER])[0][1].item()
        body += [filler] * (tokens - len(body))
    with torch.no_grad():
        return model.token_embedding(torch.tensor(body, device=device)).detach().float().clone()


def encode_with_context(model, tokenizer, names: Sequence[str], context: torch.Tensor
                        ) -> torch.Tensor:
    """Normalised embeddings (N, D) of `names`, each after the context (M, W) or a context per
    name (N, M, W); differentiable in the context, the text tower's weights untouched."""
    if not supports_context(model):
        raise ModelError("Learned prompt context needs an open_clip CLIP text tower "
                         f"('{type(model).__name__}' has another kind)")
    names = list(names)
    count = context.shape[-2]
    device = model.token_embedding.weight.device
    tokens = tokenizer([" ".join([PLACEHOLDER] * count) + f" {name}." for name in names]).to(device)
    placeholder = tokenizer([PLACEHOLDER])[0][1].item()
    if not bool((tokens[:, 1:1 + count] == placeholder).all()):
        raise ModelError("The tokenizer split the context placeholders unexpectedly")
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    context = context.to(device=device, dtype=cast_dtype)
    if context.dim() == 2:
        context = context.expand(len(names), -1, -1)
    x = torch.cat([x[:, :1], context, x[:, 1 + count:]], dim=1)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
    return F.normalize(x.float(), dim=-1)


def context_delta(model, tokenizer, names: Sequence[str], context: torch.Tensor,
                  initial: torch.Tensor, class_context: Optional[torch.Tensor] = None
                  ) -> torch.Tensor:
    """(N, D): what the learned context changes in each name's embedding (zero while it is the
    initial context). class_context: (N, M, W) added to the shared context per name."""
    learned = context if class_context is None else context[None] + class_context
    with torch.no_grad():
        start = encode_with_context(model, tokenizer, names, initial)
    return encode_with_context(model, tokenizer, names, learned) - start
