/*
 * rate_limit.c — placeholder until the rate-limit capability lands.
 */
#include "postgres.h"

#include "apicore.h"

void
RateLimitInit(void)
{
}

void
RateLimitShmemRequest(void)
{
}

void
RateLimitShmemStartup(void)
{
}
