/*
 * idempotency.c — placeholder until the idempotency capability lands.
 */
#include "postgres.h"

#include "apicore.h"

void
IdempotencyInit(void)
{
}
