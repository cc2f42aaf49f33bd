/*
 * saga.c — placeholder until the saga capability lands.
 */
#include "postgres.h"

#include "apicore.h"

void
SagaInit(void)
{
}
