SELECT apicore.rate_limit('hot', 100, '1 second');
