SELECT saga_id, step, attempt FROM apicore.saga_claim('bench-worker') \gset
SELECT apicore.saga_step_succeeded(:saga_id, :step, :attempt);
