"""Adaptive Wing heatmap loss with its weight map, log-only Wing for CCR, and Eq. 8's adaptive weighting."""

from __future__ import annotations

import torch
from torch import nn


def adaptive_wing_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                       omega: float = 14.0, theta: float = 0.5, epsilon: float = 1.0,
                       alpha: float = 2.1) -> torch.Tensor:
    """AWing (Wang et al. 2019): nonlinear near zero error, linear beyond ``theta``; mean over elements."""
    diff = (pred - target).abs()
    power = alpha - target
    small = omega * torch.log1p((diff / epsilon).clamp(min=0).pow(power))
    ratio = theta / epsilon
    a = omega * (1 / (1 + ratio**power)) * power * ratio ** (power - 1) / epsilon
    c = theta * a - omega * torch.log1p(ratio**power)
    loss = torch.where(diff < theta, small, a * diff - c)
    if weight is not None:
        loss = loss * weight
    return loss.mean()


def log_wing_loss(pred: torch.Tensor, target: torch.Tensor, w: float = 8.0, epsilon: float = 10.0) -> torch.Tensor:
    """Log-only Wing on the per-landmark Euclidean error (in heatmap cells): w * ln(1 + d / epsilon)."""
    d = torch.linalg.vector_norm(pred - target, dim=-1)
    valid = torch.isfinite(d)
    return (w * torch.log1p(torch.where(valid, d, torch.zeros_like(d)) / epsilon))[valid].mean()


class AdaptiveTaskWeights(nn.Module):
    """Eq. 8: sum_t alpha_t (exp(-ln sigma_t) L_t + ln sigma_t) with trainable ln sigma_t."""

    def __init__(self, alphas: list[float]):
        super().__init__()
        self.register_buffer("alphas", torch.tensor(alphas, dtype=torch.float32))
        self.log_sigma = nn.Parameter(torch.zeros(len(alphas)))

    def forward(self, losses: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(losses)
        return (self.alphas * (torch.exp(-self.log_sigma) * stacked + self.log_sigma)).sum()


def task_alphas(ccr_stages: int) -> list[float]:
    """alpha = 1 for the heatmap task and every CCR stage, 3 for the last CCR stage."""
    alphas = [1.0] * (ccr_stages + 1)
    if ccr_stages:
        alphas[-1] = 3.0
    return alphas
