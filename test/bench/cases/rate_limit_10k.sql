\set k random(1, 10000)
SELECT apicore.rate_limit('user:' || :k, 100, '1 second');
