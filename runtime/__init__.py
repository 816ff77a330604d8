"""What the plan's jobs run. Training, rollouts, data-mix search and generation land in later issues;
for now this package holds the plan contract the runtime reads (`runtime.plan`)."""
