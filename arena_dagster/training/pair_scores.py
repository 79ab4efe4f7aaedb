"""How a reward model orders preference pairs: its accuracy and mean margin on a tokenized pair dataset
(TRL RewardTrainer's `chosen_ids` / `rejected_ids` columns)."""

from __future__ import annotations


def _pair_scores(model, tokenized, pad_token_id: int, batch_size: int) -> tuple[list[float], list[float]]:
    """Rewards of the chosen and rejected sequences of a tokenized preference dataset."""
    import torch

    device = next(model.parameters()).device
    chosen_scores: list[float] = []
    rejected_scores: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(tokenized), batch_size):
            batch = tokenized[start : start + batch_size]
            sequences = batch["chosen_ids"] + batch["rejected_ids"]
            width = max(len(seq) for seq in sequences)
            input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(sequences), width), dtype=torch.long)
            for i, seq in enumerate(sequences):
                input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                attention[i, : len(seq)] = 1
            scores = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits[:, 0].float().cpu()
            half = len(sequences) // 2
            chosen_scores += scores[:half].tolist()
            rejected_scores += scores[half:].tolist()
    model.train(was_training)
    return chosen_scores, rejected_scores


def preference_accuracy(model, tokenized, pad_token_id: int, batch_size: int = 16) -> dict:
    """Share of pairs the model scores chosen > rejected, and the mean margin chosen - rejected."""
    if len(tokenized) == 0:
        return {"pairs": 0, "accuracy": None, "margin": None}
    chosen, rejected = _pair_scores(model, tokenized, pad_token_id, batch_size)
    wins = sum(c > r for c, r in zip(chosen, rejected))
    margin = sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)
    return {"pairs": len(chosen), "accuracy": wins / len(chosen), "margin": margin}
