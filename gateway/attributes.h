/*
 * attributes.h -- compiler attributes the gateway's headers use.
 */
#ifndef GATEWAY_ATTRIBUTES_H
#define GATEWAY_ATTRIBUTES_H

/* The result says whether it worked: a caller that ignores it has a bug. */
#define MUST_CHECK __attribute__((warn_unused_result))

#endif
