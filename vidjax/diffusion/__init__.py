"""Diffusion math: noise schedules, the training loss, DDIM sampling and guidance."""

from __future__ import annotations

from vidjax.diffusion.guidance import classifier_free_guidance, temporal_guidance
from vidjax.diffusion.losses import diffusion_loss, min_snr_weight
from vidjax.diffusion.samplers import ddim_sample, ddim_step, ddim_timesteps, sdedit_start_index
from vidjax.diffusion.schedules import (
    PREDICTION_TYPES,
    Schedule,
    alpha_bar,
    make_schedule,
    predict_eps,
    predict_x0,
    q_sample,
    snr,
    v_target,
)

__all__ = [
    "PREDICTION_TYPES",
    "Schedule",
    "alpha_bar",
    "classifier_free_guidance",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "diffusion_loss",
    "make_schedule",
    "min_snr_weight",
    "predict_eps",
    "predict_x0",
    "q_sample",
    "sdedit_start_index",
    "snr",
    "temporal_guidance",
    "v_target",
]
