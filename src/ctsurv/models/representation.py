"""What the CTVLM saw in a scan, as features for the survival head.

``answer_features``: for each predefined yes/no question, the hidden state at the position that
produces the answer, and the probability the model gives to "Yes" over "No". The probabilities
are interpretable (one per finding); the hidden states carry size and extent.

``visual_states``: the LM's last hidden states at the N visual-token positions, what a learned risk
query (:class:`ctsurv.models.survival.RiskQueryHead`) attends over.

Every prompt opens with the same text and the scan's visual tokens (a system turn, ``<image>``), and
only the question after them differs. That shared prefix goes through the LM once per scan; the
questions and answers continue from its key/value cache (:func:`answer_loglik`), which reads about a
third of the tokens that one whole sequence per question and answer would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctsurv.models.vlm import CACHE, CTVLM, IGNORE_INDEX, prompt_ends
from ctsurv.text.questions import REPORT_QUESTION

ANSWERS = ("Yes.", "No.")


def _answer_loglik(
    lm: torch.nn.Module, embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, **cached
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-likelihood of the label tokens (R,) and the last hidden state (R, D) at the position that
    predicts each row's first label token, for input embeddings (R, S, D)."""
    out = lm(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1, **cached)
    hidden = out.hidden_states[-1]  # (R, S, D)
    target = labels[:, 1:]  # (R, S-1): position t predicts token t+1
    keep = target != IGNORE_INDEX
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (T, vocab)
    token_ll = -F.cross_entropy(logits, target[keep], reduction="none")  # (T,)
    rows = torch.arange(len(labels), device=hidden.device)[:, None].expand_as(target)[keep]
    loglik = torch.zeros(len(labels), device=hidden.device).index_add(0, rows, token_ll)
    return loglik, hidden[torch.arange(len(labels)), prompt_ends(labels)]


def answer_loglik(
    vlm: CTVLM, image_tokens: torch.Tensor, questions: list[str], answers: tuple[str, ...] = ANSWERS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood (B, A, Q) of each answer to each question about each scan, and the hidden state
    (B, Q, D) at the last prompt position (the one that produces the answer's first token).

    Scoring whole answers works with any tokenizer: "Yes." and "No." need not be single tokens, nor
    differ in their first token. The prefix every prompt shares (see the module docstring) is read once
    per scan; where there is none, or the LM keeps no cache (gradient checkpointing in training), each
    question and answer is one whole sequence.
    """
    b, a, q = len(image_tokens), len(answers), len(questions)
    prompts = [vlm.prompt(text) for text in questions] * a
    batch = vlm.tokenize(prompts, [answer for answer in answers for _ in questions])  # (A*Q, L), right-padded
    batch = {k: v.to(image_tokens.device) for k, v in batch.items()}
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    lm = vlm.language_model
    n, cache = vlm.prefix_cache(ids, mask, labels, image_tokens)
    if cache is not None:
        cache.batch_repeat_interleave(a * q)  # study-major, like the rows below
        rest = ids[:, n:].repeat(b, 1)  # (B*A*Q, L-n)
        full_mask = torch.cat([torch.ones_like(ids[:, :n]), mask[:, n:]], 1).repeat(b, 1)
        loglik, hidden = _answer_loglik(
            lm, lm.get_input_embeddings()(rest), full_mask, labels[:, n:].repeat(b, 1), **{CACHE: cache}
        )
    else:
        embeds = vlm.embed(ids.repeat(b, 1), image_tokens.repeat_interleave(a * q, dim=0))
        loglik, hidden = _answer_loglik(lm, embeds, mask.repeat(b, 1), labels.repeat(b, 1))
    return loglik.reshape(b, a, q), hidden.reshape(b, a, q, -1)[:, 0]


@torch.no_grad()
def answer_features(vlm: CTVLM, image_tokens: torch.Tensor, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """P(yes) (B, Q) and answer-position hidden states (B, Q, D) for yes/no ``questions``, without gradients."""
    return answer_scores(vlm, image_tokens, questions)


def answer_scores(vlm: CTVLM, image_tokens: torch.Tensor, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """P(yes) (B, Q) and answer-position hidden states (B, Q, D), differentiable (stage-3 fine-tuning).

    P(yes) compares the likelihoods of the canonical answers "Yes." and "No.".
    """
    loglik, hidden = answer_loglik(vlm, image_tokens, questions, ANSWERS)
    return torch.sigmoid(loglik[:, 0] - loglik[:, 1]), hidden.float()


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
