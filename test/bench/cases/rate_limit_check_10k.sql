\set k random(1, 10000)
SELECT apicore.rate_limit_check('bench', 'user:' || :k);
