"""CTVLM: a LLaVA-style vision-language model for 3D CT.

    volume (B, C, X, Y, Z) -> vision_encoder -> grid (B, Dv, gx, gy, gz)
                           -> projector      -> visual tokens (B, N, D)
    prompt with one <image> -> N image-token ids -> embeddings, visual tokens scattered in
                           -> language_model  -> next-token loss / generated text / hidden states

The three parts are named attributes composed here, never mixed into the LM class. A prompt
is ``"<image>\\nQuestion: ...\\nAnswer:"`` and the target is the answer followed by EOS; an instruct LM
whose tokenizer has a chat template is asked in its own template instead (a system turn, then a user turn
``"<image>\\nQuestion"``; the target is the assistant's answer and its end-of-turn token). The loss is
computed on the answer tokens only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from ctsurv.config import ExperimentConfig
from ctsurv.models.language import IMAGE_TOKEN, apply_lora, build_language_model
from ctsurv.models.projector import Projector
from ctsurv.models.vision import build_vision_encoder
from ctsurv.text.questions import PRESENCE_LABELS

IGNORE_INDEX = -100
TOKEN_CACHE_SIZE = 4096  # texts CTVLM.token_ids remembers (prompts, answers, reports): a few tens of MB at most
# what a causal LM calls its key/value cache, in its arguments and outputs (transformers 5.2x renamed it)
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


SYSTEM_PROMPT = "You are a radiologist. Answer questions about the chest CT scan briefly."


def format_prompt(question: str) -> str:
    """The text a question is asked with (LMs without a chat template); ``<image>`` marks where the visual
    tokens go."""
    return f"{IMAGE_TOKEN}\nQuestion: {question}\nAnswer:"


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    """Length of the token prefix that every row of a right-padded batch shares, cut so that each row's
    last prompt token (the one that predicts its answer) lies after it."""
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # (L,)
    n = int(same.int().cumprod(0).sum())
    return min(n, int(prompt_ends(labels).min()))


def prompt_ends(labels: torch.Tensor) -> torch.Tensor:
    """The last prompt position of each row (R,): the one before its first label token."""
    return (labels != IGNORE_INDEX).int().argmax(1) - 1


def keeps_cache(lm: nn.Module) -> bool:
    """Whether ``lm`` returns its key/value cache: not in training with gradient checkpointing, which recomputes."""
    checkpointing = getattr(lm, "is_activation_checkpointing", None)  # transformers 5.2x; before: is_gradient_...
    if checkpointing is None:
        checkpointing = getattr(lm, "is_gradient_checkpointing", False)
    return not (lm.training and checkpointing)


class CTVLM(nn.Module):
    def __init__(
        self,
        vision_encoder: nn.Module,
        projector: nn.Module,
        language_model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
    ) -> None:
        super().__init__()
        self.vision_encoder = vision_encoder
        self.projector = projector
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.num_image_tokens: int = projector.num_tokens
        self.chat: bool = getattr(tokenizer, "chat_template", None) is not None  # an instruct LM's own template
        self._token_ids: dict[str, tuple[int, ...]] = {}  # see :meth:`token_ids`

    # ------------------------------------------------------------------ image side

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Visual tokens of preprocessed volumes (B, C, X, Y, Z) -> (B, N, D)."""
        return self.projector(self.vision_encoder.features(images), cells=self.projector.cells(images))

    def project_features(
        self, grid: torch.Tensor, finding_logits: torch.Tensor | None = None, cells: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Visual tokens from cached encoder features (B, Dv, gx, gy, gz) or (B, Dv, N) -> (B, N, D);
        ``finding_logits`` (B, P) override the findings head's, ``cells`` (B, K) are what it reads in the
        volumes besides the grid (``projector.cells(volumes)``; see ``Projector.forward``)."""
        return self.projector(grid, finding_logits, cells)

    # ------------------------------------------------------------------ text side

    def prompt(self, question: str) -> str:
        """The text ``question`` is asked with: the LM's chat template when it has one, else
        :func:`format_prompt`."""
        if not self.chat:
            return format_prompt(question)
        turns = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": f"{IMAGE_TOKEN}\n{question}"}]
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    def token_ids(self, text: str) -> list[int]:
        """The tokenizer's ids of ``text`` without special tokens, remembered for the next call: training tokenizes
        the same questions and answers every epoch (at most :data:`TOKEN_CACHE_SIZE` texts are kept)."""
        ids = self._token_ids.get(text)
        if ids is None:
            if len(self._token_ids) >= TOKEN_CACHE_SIZE:
                self._token_ids.clear()
            ids = self._token_ids[text] = tuple(self.tokenizer(text, add_special_tokens=False).input_ids)
        return list(ids)

    def tokenize(
        self, prompts: list[str], answers: list[str] | None = None, padding_side: str = "right"
    ) -> dict[str, torch.Tensor]:
        """Token ids with each ``<image>`` expanded to N image tokens; labels mask all but the answers.

        Sequences longer than ``max_length`` are cut at the end (the answer's tail), never in the image.
        """
        rows, labels = [], []
        for i, prompt in enumerate(prompts):
            ids = self.token_ids(prompt)
            if ids.count(self.image_token_id) != 1:
                raise ValueError(f"prompt {i} must contain exactly one {IMAGE_TOKEN}, got {ids.count(self.image_token_id)}")
            at = ids.index(self.image_token_id)
            start = [] if self.chat else [self.tokenizer.bos_token_id]  # a chat template opens the text itself
            ids = start + ids[:at] + [self.image_token_id] * self.num_image_tokens + ids[at + 1 :]
            target = [IGNORE_INDEX] * len(ids)
            if answers is not None:
                text = answers[i] if self.chat else " " + answers[i]  # a chat answer opens its own turn
                answer = self.token_ids(text) + [self.tokenizer.eos_token_id]
                ids, target = ids + answer, target + answer
            rows.append(ids[: self.max_length])
            labels.append(target[: self.max_length])
        out = self._padded({"input_ids": rows, "labels": labels}, padding_side)
        if answers is None:
            del out["labels"]
        return out

    def tokenize_conversations(self, conversations: list[list[tuple[str, str]]]) -> dict[str, torch.Tensor]:
        """One sequence per study for a chat LM: its (question, answer) pairs as the turns of one conversation,
        the image in the first user turn, so that the image and the system turn are read once per study, not
        once per question (``pretrain.pack_questions``).

        Like :meth:`tokenize`, labels keep the answers (each with its end-of-turn token) only; ``answer_index``
        (B, L) numbers the answers of the batch 0, 1, ... at their label positions (-1 elsewhere), so that a
        loss may weigh every answer alike. Sequences longer than ``max_length`` lose their last turns.
        """
        if not self.chat:
            raise ValueError("packing questions into one conversation needs a language model with a chat template")
        eos = self.tokenizer.eos_token
        rows, labels, answers = [], [], []
        n_answers = 0
        for pairs in conversations:
            turns: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPT}]
            ids: list[int] = []
            target: list[int] = []
            index: list[int] = []
            text = ""
            for k, (question, answer) in enumerate(pairs):
                turns.append({"role": "user", "content": f"{IMAGE_TOKEN}\n{question}" if k == 0 else question})
                prompt = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
                if not prompt.startswith(text):
                    raise ValueError("this chat template does not extend a conversation turn by turn; "
                                     "set pretrain.pack_questions=false")
                prompt_ids = self.tokenizer(prompt[len(text) :], add_special_tokens=False).input_ids
                if k == 0:
                    at = prompt_ids.index(self.image_token_id)
                    prompt_ids = prompt_ids[:at] + [self.image_token_id] * self.num_image_tokens + prompt_ids[at + 1 :]
                answer_ids = self.tokenizer(answer, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
                ids += prompt_ids + answer_ids
                target += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
                index += [-1] * len(prompt_ids) + [n_answers] * len(answer_ids)
                n_answers += 1
                turns.append({"role": "assistant", "content": answer})
                text = prompt + answer + eos
            rows.append(ids[: self.max_length])
            labels.append(target[: self.max_length])
            answers.append(index[: self.max_length])
        return self._padded({"input_ids": rows, "labels": labels, "answer_index": answers})

    def _padded(self, columns: dict[str, list[list[int]]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """(B, L) tensors of the token lists in ``columns``, padded on ``padding_side`` (input ids with the pad
        token, labels with IGNORE_INDEX, answer indices with -1), and the attention mask."""
        fill = {"input_ids": self.tokenizer.pad_token_id, "labels": IGNORE_INDEX, "answer_index": -1}
        lengths = [len(r) for r in columns["input_ids"]]
        width = max(lengths)
        out = {k: torch.full((len(lengths), width), fill[k], dtype=torch.long) for k in columns}
        out["attention_mask"] = torch.zeros((len(lengths), width), dtype=torch.long)
        for i, n in enumerate(lengths):
            span = slice(width - n, width) if padding_side == "left" else slice(0, n)
            for k, rows in columns.items():
                out[k][i, span] = torch.tensor(rows[i])
            out["attention_mask"][i, span] = 1
        return out

    def embed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """LM input embeddings with the visual tokens scattered into the image-token positions."""
        embeds = self.language_model.get_input_embeddings()(input_ids)  # (B, L, D)
        mask = input_ids == self.image_token_id  # (B, L)
        if int(mask.sum()) * embeds.shape[-1] != image_tokens.numel():
            raise ValueError(
                f"the prompts hold {int(mask.sum())} image-token positions but {image_tokens.shape[0]}×"
                f"{image_tokens.shape[1]} visual tokens were given"
            )
        mask = mask.unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, image_tokens.to(embeds.dtype))

    # ------------------------------------------------------------------ model

    def prefix_cache(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, image_tokens: torch.Tensor
    ) -> tuple[int, Any]:
        """``(n, cache)``: the first n tokens, which every row of the right-padded batch shares
        (:func:`shared_prefix`), read once per image of ``image_tokens`` (B, N, D), and the LM's key/value cache of
        them (batch B). ``(0, None)`` where nothing can be shared: no common prefix, an LM that keeps no cache
        (gradient checkpointing in training), or image tokens after the prefix."""
        lm = self.language_model
        n = shared_prefix(input_ids, attention_mask, labels)
        if n <= 0 or not keeps_cache(lm) or (input_ids[:, n:] == self.image_token_id).any():
            return 0, None
        prefix = self.embed(input_ids[:1, :n].expand(len(image_tokens), n), image_tokens)  # (B, n, D)
        return n, getattr(lm(inputs_embeds=prefix, use_cache=True, logits_to_keep=1), CACHE)

    def answer_token_losses(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, image_tokens: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of every answer token (T,) and the index (T,) of the sequence it belongs to.

        ``image_tokens`` (B, N, D) are the studies' visual tokens and ``image_index`` (S,) the study of each
        sequence (default: one study per sequence). The prefix that every sequence shares (the image and the
        prompt's opening words, see :func:`shared_prefix`) goes through the LM once per study, and each
        sequence continues from its study's key/value cache: the same losses and gradients as whole
        sequences, for a third of the tokens when a study's short questions share a batch. An LM that keeps
        no cache (gradient checkpointing) reads whole sequences.

        The output head runs only at the positions that predict an answer token: most positions
        hold visual or prompt tokens, and a full (B, L, vocab) logit tensor would cost more than
        the decoder itself for short answers.
        """
        lm = self.language_model
        if image_index is None:
            image_index = torch.arange(len(input_ids), device=input_ids.device)
        studies, study_of_row = torch.unique(image_index, return_inverse=True)
        n, cache = self.prefix_cache(input_ids, attention_mask, labels, image_tokens[studies])
        if cache is not None:
            cache.batch_select_indices(study_of_row)  # one cache row per sequence; indexing keeps the gradients
            rest = lm.get_input_embeddings()(input_ids[:, n:])
        else:
            rest = self.embed(input_ids, image_tokens[image_index])
        out = lm(
            inputs_embeds=rest, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1,
            **({} if cache is None else {CACHE: cache}),
        )
        hidden = out.hidden_states[-1][:, :-1]  # (S, L-n-1): position t predicts token t+1
        target = labels[:, n + 1 :]  # the labels start after the prefix (shared_prefix makes sure)
        keep = target != IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[keep])  # (T, vocab)
        rows = torch.arange(len(input_ids), device=input_ids.device)[:, None].expand_as(target)[keep]  # (T,)
        return F.cross_entropy(logits.float(), target[keep], reduction="none"), rows

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        image_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over the answer tokens, given visual tokens (B, N, D)."""
        losses, _ = self.answer_token_losses(input_ids, attention_mask, labels, image_tokens)
        return losses.mean()

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """The LM's last hidden states (B, L, D): the representation read by the survival head."""
        embeds = self.embed(input_ids, image_tokens)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[-1]

    @torch.no_grad()
    def generate(self, image_tokens: torch.Tensor, questions: list[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy answers to ``questions``, one per visual-token set in ``image_tokens`` (B, N, D)."""
        batch = self.tokenize([self.prompt(q) for q in questions], padding_side="left")
        batch = {k: v.to(image_tokens.device) for k, v in batch.items()}
        embeds = self.embed(batch["input_ids"], image_tokens)
        out = self.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def build_vlm(cfg: ExperimentConfig, texts: list[str] | None = None, tokenizer: PreTrainedTokenizerBase | None = None) -> CTVLM:
    """A CTVLM as ``cfg`` describes it (weights random except for pretrained parts).

    ``texts`` train the tiny model's tokenizer; a checkpoint passes its saved ``tokenizer`` instead.
    """
    image_size_xyz = tuple(reversed(cfg.data.target_shape_zyx))
    vision = build_vision_encoder(cfg.vision, image_size_xyz, in_channels=cfg.data.in_channels,
        skip_channels=cfg.data.n_blob_channels)
    lm, tokenizer = build_language_model(cfg.language, texts=texts, tokenizer=tokenizer)
    if cfg.lora.enabled:
        lm = apply_lora(lm, cfg.lora)
    projector = Projector(cfg.projector, vision.out_dim, lm.get_input_embeddings().embedding_dim, len(PRESENCE_LABELS))
    return CTVLM(vision, projector, lm, tokenizer, max_length=cfg.language.max_length)
