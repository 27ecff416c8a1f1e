"""After pre-training: SFT, LoRA and prompt tuning, reward models and DPO on the shared trainer."""
