/**
 * @peculiar/x509, loaded the one way that works: it resolves its algorithm
 * table through tsyringe, which needs the Reflect metadata API installed before
 * the library's first line runs. Import X.509 helpers from here, never from
 * '@peculiar/x509' directly.
 */
import 'reflect-metadata';

export * from '@peculiar/x509';
