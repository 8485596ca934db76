"""What the CTVLM saw in a scan, as features for the survival head.

``answer_features``: for each predefined yes/no question, the hidden state at the position that
produces the answer, and the probability the model gives to "Yes" over "No". The probabilities
are interpretable (one per finding); the hidden states carry size and extent.

``visual_states``: the LM's last hidden states at the N visual-token positions, what a learned risk
query (:class:`ctsurv.models.survival.RiskQueryHead`) attends over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctsurv.models.vlm import CTVLM, IGNORE_INDEX
from ctsurv.text.questions import REPORT_QUESTION


def score_answer(
    vlm: CTVLM, image_tokens: torch.Tensor, prompts: list[str], answer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood (B,) of ``answer`` after each prompt, and the hidden state (B, D) at the last
    prompt position (the one that produces the answer's first token).

    Scoring whole answers works with any tokenizer: " Yes." and " No." need not be single tokens,
    nor differ in their first token.
    """
    batch = vlm.tokenize(prompts, [answer] * len(prompts))  # right-padded
    batch = {k: v.to(image_tokens.device) for k, v in batch.items()}
    embeds = vlm.embed(batch["input_ids"], image_tokens)
    out = vlm.language_model(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"], output_hidden_states=True, logits_to_keep=1
    )
    hidden = out.hidden_states[-1]  # (B, L, D)
    target = batch["labels"][:, 1:]  # (B, L-1): position t predicts token t+1
    keep = target != IGNORE_INDEX
    logits = vlm.language_model.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (T, vocab)
    token_ll = -F.cross_entropy(logits, target[keep], reduction="none")  # (T,)
    rows = torch.arange(len(prompts), device=hidden.device)[:, None].expand_as(target)[keep]
    loglik = torch.zeros(len(prompts), device=hidden.device).index_add(0, rows, token_ll)
    prompt_end = (batch["labels"] != IGNORE_INDEX).int().argmax(1) - 1  # (B,)
    return loglik, hidden[torch.arange(len(prompts)), prompt_end]


@torch.no_grad()
def answer_features(vlm: CTVLM, image_tokens: torch.Tensor, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """P(yes) (B, Q) and answer-position hidden states (B, Q, D) for yes/no ``questions``, without gradients."""
    return answer_scores(vlm, image_tokens, questions)


def answer_scores(vlm: CTVLM, image_tokens: torch.Tensor, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """P(yes) (B, Q) and answer-position hidden states (B, Q, D), differentiable (stage-3 fine-tuning).

    P(yes) compares the likelihoods of the canonical answers " Yes." and " No."; all B×Q prompts
    go through the LM together (study-major order).
    """
    b, q = len(image_tokens), len(questions)
    prompts = [vlm.prompt(text) for _ in range(b) for text in questions]
    tokens = image_tokens.repeat_interleave(q, dim=0)  # (B*Q, N, D)
    yes, h = score_answer(vlm, tokens, prompts, "Yes.")
    no, _ = score_answer(vlm, tokens, prompts, "No.")
    return torch.sigmoid(yes - no).reshape(b, q), h.float().reshape(b, q, -1)


def visual_states(vlm: CTVLM, image_tokens: torch.Tensor) -> torch.Tensor:
    """The LM's last hidden states at the visual-token positions (B, N, D).

    ``<image>`` opens every prompt, so in a causal LM these states depend on the scan alone, not on
    the question that follows.
    """
    b = len(image_tokens)
    batch = vlm.tokenize([vlm.prompt(REPORT_QUESTION)] * b)
    batch = {k: v.to(image_tokens.device) for k, v in batch.items()}
    hidden = vlm.hidden_states(batch["input_ids"], batch["attention_mask"], image_tokens)  # (B, L, D)
    at_image = batch["input_ids"] == vlm.image_token_id  # (B, L), N per row
    return hidden[at_image].float().reshape(b, vlm.num_image_tokens, -1)
