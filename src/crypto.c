/*
 * crypto.c — placeholder until the crypto capability lands.
 */
#include "postgres.h"

#include "apicore.h"

void
CryptoInit(void)
{
}
