SELECT apicore.rate_limit_check('bench', 'hot');
